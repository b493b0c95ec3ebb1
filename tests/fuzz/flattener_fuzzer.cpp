// libFuzzer target: a hostile layer. The input is one layer blob (a tar, compressed or not, or
// anything else) under a fixed well-formed layer, flattened into a cpio written to /dev/null.
// Malformed layers must end in one of the library's errors, never a crash or a write outside
// the archive.
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include <compactor/archive/format.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>
#include <compactor/support/unique_fd.hpp>

namespace {

compactor::image::layer memory_layer(std::vector<std::byte> blob) {
  compactor::image::layer layer;
  layer.digest = "sha256:fuzz";
  layer.size = blob.size();
  auto shared = std::make_shared<std::vector<std::byte>>(std::move(blob));
  layer.open = [shared]() -> compactor::image::byte_reader {
    auto offset = std::make_shared<std::size_t>(0);
    return [shared, offset](std::span<std::byte> buffer) {
      const std::size_t count = std::min(buffer.size(), shared->size() - *offset);
      if (count > 0) {
        std::memcpy(buffer.data(), shared->data() + *offset, count);
      }
      *offset += count;
      return count;
    };
  };
  return layer;
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> blob(size);
  if (size > 0) {
    std::memcpy(blob.data(), data, size);
  }
  const std::vector<compactor::image::layer> layers = {memory_layer(std::move(blob))};

  compactor::unique_fd sink(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  try {
    compactor::archive::writer<compactor::archive::cpio_newc> writer(sink.get());
    compactor::flatten::flatten(layers, writer);
    writer.finish();
  } catch (const compactor::error&) {
    // a refused layer
  } catch (const std::system_error&) {
    // a host failure (the spool), reported as such
  }
  return 0;
}
