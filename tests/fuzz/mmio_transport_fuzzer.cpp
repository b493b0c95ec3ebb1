// libFuzzer target: a hostile driver programming a virtio-blk device through the virtio-mmio
// registers. Each 9 input bytes are one access: a kind (read, write or queue notification),
// a register offset and a value. Guest memory follows the accesses, so queues may be set up
// over arbitrary rings. The disk is a small temporary file.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include <compactor/backends/raw_file.hpp>
#include <compactor/virtio/block.hpp>
#include <compactor/virtio/mmio_transport.hpp>

#include "../virtio/plain_memory.hpp"

using namespace compactor::virtio;
using memory_type = compactor::testing::plain_memory;

namespace {

// A 32 KiB disk file, removed when the fuzzer exits.
struct temporary_disk {
  std::string path;

  temporary_disk() {
    char name[] = "/tmp/compactor-fuzz-disk-XXXXXX";
    const int fd = ::mkstemp(name);
    if (fd < 0 || ::ftruncate(fd, 64 * 512) != 0) {
      std::abort();
    }
    ::close(fd);
    path = name;
  }
  ~temporary_disk() { ::unlink(path.c_str()); }
};

const char* disk_path() {
  static const temporary_disk disk;
  return disk.path.c_str();
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::size_t access_size = 9;
  constexpr std::size_t max_accesses = 64;
  memory_type memory(0, 1 << 16);
  block_device<compactor::backends::raw_file> device(
      compactor::backends::raw_file(disk_path(), (size & 1) != 0));
  mmio_transport<block_device<compactor::backends::raw_file>, memory_type> transport(
      device, memory, [] {});

  const std::size_t accesses = std::min(size / access_size, max_accesses);
  const std::size_t memory_bytes = std::min(size - accesses * access_size, std::size_t{1} << 16);
  std::memcpy(memory.host_span(0, memory_bytes).data(), data + accesses * access_size,
              memory_bytes);

  for (std::size_t n = 0; n < accesses; ++n) {
    const std::uint8_t* access = data + n * access_size;
    std::uint32_t offset = 0;
    std::uint32_t value = 0;
    std::memcpy(&offset, access + 1, 4);
    std::memcpy(&value, access + 5, 4);
    offset %= 0x200;
    const std::size_t width = std::size_t{1} << (access[0] >> 6); // 1, 2, 4 or 8 bytes
    switch (access[0] % 3) {
    case 0: {
      std::byte out[8];
      transport.read(offset, std::span(out, width));
      break;
    }
    case 1: {
      std::byte in[8] = {};
      std::memcpy(in, &value, 4);
      transport.write(offset, std::span(in, width));
      break;
    }
    default:
      transport.notify(value % 4);
      break;
    }
  }
  return 0;
}
