// libFuzzer target: hostile layers. The input is up to four layer blobs, bottom first, split at
// the separator below (see flattener_seeds.cpp, which writes the seed corpus in this form, and
// flattener.dict); each is a tar, compressed or not, or anything else. They are flattened into
// a cpio that is then read back in order, the way the kernel unpacks it: every name must be
// relative with no "", "." or ".." part, and every entry's ancestors must be directories when
// it arrives, so that nothing is created outside the root or through a symlink. Malformed
// layers must end in one of the library's errors, never a crash.
#include <archive.h>
#include <archive_entry.h>
#include <stdio.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <compactor/archive/format.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>

namespace {

constexpr std::string_view separator = "\n==compactor-layer==\n";
constexpr std::size_t max_layers = 4;

compactor::image::layer memory_layer(std::size_t index, std::vector<std::byte> blob) {
  compactor::image::layer layer;
  layer.digest = "sha256:fuzz" + std::to_string(index);
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

std::vector<compactor::image::layer> split_layers(std::string_view input) {
  std::vector<compactor::image::layer> layers;
  while (layers.size() < max_layers) {
    const auto end = layers.size() + 1 == max_layers ? std::string_view::npos
                                                     : input.find(separator);
    const auto piece = input.substr(0, end);
    std::vector<std::byte> blob(piece.size());
    if (!piece.empty()) {
      std::memcpy(blob.data(), piece.data(), piece.size());
    }
    layers.push_back(memory_layer(layers.size(), std::move(blob)));
    if (end == std::string_view::npos) {
      break;
    }
    input.remove_prefix(end + separator.size());
  }
  return layers;
}

void require(bool holds) {
  if (!holds) {
    std::abort(); // libFuzzer reports the input whose archive broke the rule
  }
}

// The unpacker's view of the archive: S_IFMT bits of each path created so far.
void check_archive(std::FILE* file) {
  std::fflush(file);
  std::rewind(file);
  std::unique_ptr<::archive, decltype(&archive_read_free)> reader(archive_read_new(),
                                                                  archive_read_free);
  archive_read_support_format_cpio(reader.get());
  require(archive_read_open_FILE(reader.get(), file) == ARCHIVE_OK);
  std::map<std::string, unsigned> types;
  ::archive_entry* entry = nullptr;
  int status = ARCHIVE_OK;
  while ((status = archive_read_next_header(reader.get(), &entry)) == ARCHIVE_OK) {
    const std::string path = archive_entry_pathname(entry);
    require(!path.empty() && path.front() != '/');
    for (std::size_t start = 0; start <= path.size();) {
      const auto slash = std::min(path.find('/', start), path.size());
      const auto part = std::string_view(path).substr(start, slash - start);
      require(!part.empty() && part != "." && part != "..");
      if (slash < path.size()) {
        const auto found = types.find(path.substr(0, slash));
        require(found != types.end() && found->second == AE_IFDIR);
      }
      start = slash + 1;
    }
    const auto type = archive_entry_filetype(entry);
    if (const auto found = types.find(path); found != types.end() && found->second == AE_IFDIR &&
                                             type != AE_IFDIR) {
      // The kernel cannot remove a directory that still holds entries.
      const auto child = types.lower_bound(path + "/");
      require(child == types.end() || !child->first.starts_with(path + "/"));
    }
    types[path] = type;
  }
  require(status == ARCHIVE_EOF);
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto layers =
      split_layers(std::string_view(reinterpret_cast<const char*>(data), size));

  // Low limits, so that a small bomb or flood ends quickly in the limit's error.
  compactor::flatten::options options;
  options.max_uncompressed_bytes = std::uint64_t{64} << 20;
  options.max_entries = 20'000;

  std::FILE* file = std::tmpfile();
  require(file != nullptr);
  bool complete = false;
  try {
    compactor::archive::writer<compactor::archive::cpio_newc> writer(
        fileno(file), {.compression = {.method = compactor::archive::compression::none}});
    compactor::flatten::flatten(layers, writer, options);
    writer.finish();
    complete = true;
  } catch (const compactor::error&) {
    // a refused layer
  } catch (const std::system_error&) {
    // a host failure (the spool), reported as such
  }
  if (complete) {
    check_archive(file);
  }
  std::fclose(file);
  return 0;
}
