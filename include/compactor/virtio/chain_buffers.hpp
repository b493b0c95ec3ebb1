// The host bytes of a descriptor chain, split into the part the driver wrote (readable) and
// the part the device may fill (writable), with helpers that copy across buffer boundaries.
#pragma once

#include <sys/uio.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <span>
#include <vector>

#include <compactor/virtio/guest_memory.hpp>
#include <compactor/virtio/split_queue.hpp>

namespace compactor::virtio {

// A sequence of host byte ranges read or written as one stream.
class scattered_bytes {
public:
  void append(std::span<std::byte> piece) {
    if (!piece.empty()) {
      pieces_.push_back(piece);
      size_ += piece.size();
    }
  }

  [[nodiscard]] std::size_t size() const noexcept { return size_; }
  [[nodiscard]] const std::vector<std::span<std::byte>>& pieces() const noexcept {
    return pieces_;
  }

  // Copies bytes from `offset` into `out`; returns how many were available.
  std::size_t copy_out(std::size_t offset, std::span<std::byte> out) const {
    std::size_t copied = 0;
    for_each_piece(offset, out.size(), [&](std::span<std::byte> piece) {
      std::memcpy(out.data() + copied, piece.data(), piece.size());
      copied += piece.size();
    });
    return copied;
  }

  // Copies `in` to `offset`; returns how many bytes fitted.
  std::size_t copy_in(std::size_t offset, std::span<const std::byte> in) {
    std::size_t copied = 0;
    for_each_piece(offset, in.size(), [&](std::span<std::byte> piece) {
      std::memcpy(piece.data(), in.data() + copied, piece.size());
      copied += piece.size();
    });
    return copied;
  }

  // The bytes [offset, offset + length) as a new sequence (clipped to what exists).
  [[nodiscard]] scattered_bytes slice(std::size_t offset, std::size_t length) const {
    scattered_bytes result;
    for_each_piece(offset, length, [&](std::span<std::byte> piece) { result.append(piece); });
    return result;
  }

  // The pieces as iovecs for preadv/pwritev/readv/writev.
  [[nodiscard]] std::vector<iovec> iovecs() const {
    std::vector<iovec> result;
    result.reserve(pieces_.size());
    for (const auto piece : pieces_) {
      result.push_back({piece.data(), piece.size()});
    }
    return result;
  }

private:
  template <typename Visit>
  void for_each_piece(std::size_t offset, std::size_t length, Visit&& visit) const {
    for (const auto piece : pieces_) {
      if (length == 0) {
        return;
      }
      if (offset >= piece.size()) {
        offset -= piece.size();
        continue;
      }
      const std::size_t take = std::min(piece.size() - offset, length);
      visit(piece.subspan(offset, take));
      offset = 0;
      length -= take;
    }
  }

  std::vector<std::span<std::byte>> pieces_;
  std::size_t size_ = 0;
};

struct chain_buffers {
  scattered_bytes readable;
  scattered_bytes writable;
};

// Maps a well-formed chain's buffers to host memory; the walker already checked every range.
template <guest_memory Memory>
chain_buffers map_chain(Memory& memory, const descriptor_chain& chain) {
  chain_buffers result;
  for (const auto& buffer : chain.buffers) {
    auto bytes = memory.host_span(buffer.address, buffer.length);
    (buffer.device_writable ? result.writable : result.readable).append(bytes);
  }
  return result;
}

} // namespace compactor::virtio
