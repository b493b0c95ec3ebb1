// virtio-blk (virtio 1.2, 5.2) over a storage backend such as backends::raw_file.
#pragma once

#include <algorithm>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/virtio/chain_buffers.hpp>
#include <compactor/virtio/mmio_transport.hpp>
#include <compactor/virtio/split_queue.hpp>

namespace compactor::virtio {

template <typename Backend>
concept block_backend = requires(Backend& backend, const Backend& const_backend,
                                 std::uint64_t offset, const std::vector<iovec>& buffers) {
  { const_backend.size_bytes() } -> std::convertible_to<std::uint64_t>;
  { const_backend.read_only() } -> std::same_as<bool>;
  { const_backend.id() } -> std::convertible_to<std::string_view>;
  { backend.read(offset, buffers) } -> std::same_as<bool>;
  { backend.write(offset, buffers) } -> std::same_as<bool>;
  { backend.flush() } -> std::same_as<bool>;
};

// Feature bits (5.2.3).
inline constexpr unsigned VIRTIO_BLK_F_SEG_MAX = 2;
inline constexpr unsigned VIRTIO_BLK_F_RO = 5;
inline constexpr unsigned VIRTIO_BLK_F_BLK_SIZE = 6;
inline constexpr unsigned VIRTIO_BLK_F_FLUSH = 9;

// Request types and status values (5.2.6).
inline constexpr std::uint32_t VIRTIO_BLK_T_IN = 0;
inline constexpr std::uint32_t VIRTIO_BLK_T_OUT = 1;
inline constexpr std::uint32_t VIRTIO_BLK_T_FLUSH = 4;
inline constexpr std::uint32_t VIRTIO_BLK_T_GET_ID = 8;
inline constexpr std::uint8_t VIRTIO_BLK_S_OK = 0;
inline constexpr std::uint8_t VIRTIO_BLK_S_IOERR = 1;
inline constexpr std::uint8_t VIRTIO_BLK_S_UNSUPP = 2;

inline constexpr std::uint64_t sector_size = 512;
inline constexpr std::size_t blk_id_bytes = 20;

template <typename Backend>
class block_device {
  static_assert(block_backend<Backend>,
                "a block backend needs size_bytes(), read_only(), id(), and read(), write() and "
                "flush() that return false on a host I/O error");

public:
  static constexpr std::uint32_t device_id = 2;
  static constexpr std::size_t queue_count = 1;
  static constexpr std::string_view name = "blk";

  explicit block_device(Backend backend) : backend_(std::move(backend)) {}

  [[nodiscard]] Backend& backend() noexcept { return backend_; }

  [[nodiscard]] std::uint64_t device_features() const {
    std::uint64_t features = feature_bit(VIRTIO_BLK_F_SEG_MAX) |
                             feature_bit(VIRTIO_BLK_F_BLK_SIZE) | feature_bit(VIRTIO_BLK_F_FLUSH);
    if (backend_.read_only()) {
      features |= feature_bit(VIRTIO_BLK_F_RO);
    }
    return features;
  }

  // struct virtio_blk_config (5.2.4): capacity, size_max, seg_max, geometry, blk_size.
  void read_config(std::uint32_t offset, std::span<std::byte> out) const {
    std::array<std::byte, 24> config{};
    const std::uint64_t capacity = backend_.size_bytes() / sector_size;
    const std::uint32_t seg_max = max_queue_size - 2; // header and status take two descriptors
    const std::uint32_t blk_size = sector_size;
    std::memcpy(config.data() + 0, &capacity, 8);
    std::memcpy(config.data() + 12, &seg_max, 4);
    std::memcpy(config.data() + 20, &blk_size, 4);
    if (offset < config.size()) {
      const std::size_t count = std::min(out.size(), config.size() - offset);
      std::memcpy(out.data(), config.data() + offset, count);
    }
  }

  void write_config(std::uint32_t, std::span<const std::byte>) {} // all fields are read-only

  void activate(std::uint64_t) {}
  void reset() {}

  template <guest_memory Memory>
  bool process(std::size_t, split_queue<Memory>& queue, Memory& memory) {
    bool used = false;
    while (auto chain = queue.pop()) {
      queue.push_used(chain->head, chain->ok() ? serve(map_chain(memory, *chain)) : 0);
      if (!chain->ok()) {
        log_malformed(chain->malformed);
      }
      used = true;
    }
    return used;
  }

  // Requests refused as malformed or out of range (the first one is also logged).
  [[nodiscard]] std::uint64_t malformed_requests() const noexcept { return malformed_requests_; }

private:
  struct request_header {
    std::uint32_t type;
    std::uint32_t reserved;
    std::uint64_t sector;
  };

  // Serves one request; returns the number of bytes written into the chain, status included.
  std::uint32_t serve(chain_buffers buffers) {
    request_header header{};
    if (buffers.writable.size() == 0 ||
        buffers.readable.copy_out(0, std::as_writable_bytes(std::span(&header, 1))) !=
            sizeof header) {
      log_malformed("request without a header or a status byte");
      return 0;
    }
    // The status is the last writable byte; the data lies between the header and it.
    const std::size_t data_length = buffers.writable.size() - 1;
    auto status_byte = buffers.writable.slice(data_length, 1);
    const auto out_data = buffers.readable.slice(sizeof header, buffers.readable.size());
    const auto in_data = buffers.writable.slice(0, data_length);

    std::uint32_t written = 0;
    std::uint8_t status = VIRTIO_BLK_S_OK;
    switch (header.type) {
    case VIRTIO_BLK_T_IN:
      status = transfer(header.sector, in_data, false);
      written = status == VIRTIO_BLK_S_OK ? static_cast<std::uint32_t>(in_data.size()) : 0;
      break;
    case VIRTIO_BLK_T_OUT:
      status = backend_.read_only() ? VIRTIO_BLK_S_IOERR : transfer(header.sector, out_data, true);
      break;
    case VIRTIO_BLK_T_FLUSH:
      status = backend_.flush() ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
      break;
    case VIRTIO_BLK_T_GET_ID: {
      // 5.2.6: up to 20 bytes, NUL-terminated only when shorter.
      std::array<std::byte, blk_id_bytes> id{};
      const std::string_view name = backend_.id();
      std::memcpy(id.data(), name.data(), std::min(name.size(), id.size()));
      auto target = in_data;
      written = static_cast<std::uint32_t>(target.copy_in(0, id));
      break;
    }
    default:
      status = VIRTIO_BLK_S_UNSUPP;
      break;
    }
    status_byte.copy_in(0, std::as_bytes(std::span(&status, 1)));
    return written + 1;
  }

  // A read or write of whole sectors inside the disk (5.2.6.2: the device MUST fail others).
  std::uint8_t transfer(std::uint64_t sector, const scattered_bytes& data, bool writing) {
    const std::uint64_t capacity = backend_.size_bytes() / sector_size;
    const std::uint64_t sectors = data.size() / sector_size;
    if (data.size() % sector_size != 0 || sector > capacity || sectors > capacity - sector) {
      log_malformed(fmt::format("{} of {} bytes at sector {} on a disk of {} sectors",
                                writing ? "write" : "read", data.size(), sector, capacity));
      return VIRTIO_BLK_S_IOERR;
    }
    const auto iovecs = data.iovecs();
    const bool done = writing ? backend_.write(sector * sector_size, iovecs)
                              : backend_.read(sector * sector_size, iovecs);
    return done ? VIRTIO_BLK_S_OK : VIRTIO_BLK_S_IOERR;
  }

  void log_malformed(std::string_view what) {
    ++malformed_requests_;
    if (malformed_requests_ == 1) {
      fmt::print(stderr, "virtio-blk: {} (further ones are counted, not logged)\n", what);
    }
  }

  Backend backend_;
  std::uint64_t malformed_requests_ = 0;
};

} // namespace compactor::virtio
