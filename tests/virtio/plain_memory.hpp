// Guest memory as a plain buffer at a guest-physical base address, and a minimal driver that
// lays out a split virtqueue in it the way a guest's virtio driver would. Tests use these to
// drive the device side of the rings without KVM.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <vector>

#include <compactor/virtio/split_queue.hpp>

namespace compactor::testing {

class plain_memory {
public:
  plain_memory(std::uint64_t base, std::size_t size) : base_(base), bytes_(size) {}

  [[nodiscard]] bool contains(std::uint64_t address, std::uint64_t length) const {
    return address >= base_ && address - base_ <= bytes_.size() &&
           length <= bytes_.size() - (address - base_);
  }

  std::span<std::byte> host_span(std::uint64_t address, std::uint64_t length) {
    return {bytes_.data() + (address - base_), static_cast<std::size_t>(length)};
  }

  template <typename T>
  void put(std::uint64_t address, const T& value) {
    std::memcpy(host_span(address, sizeof value).data(), &value, sizeof value);
  }

  template <typename T>
  T get(std::uint64_t address) {
    T value;
    std::memcpy(&value, host_span(address, sizeof value).data(), sizeof value);
    return value;
  }

private:
  std::uint64_t base_;
  std::vector<std::byte> bytes_;
};

// Lays out descriptor table, available ring and used ring at fixed places and publishes
// chains, as a driver does (virtio 1.2, 2.7.13).
class ring_driver {
public:
  static constexpr std::uint64_t descriptors_at = 0x10000;
  static constexpr std::uint64_t available_at = 0x11000;
  static constexpr std::uint64_t used_at = 0x12000;
  static constexpr std::uint64_t data_at = 0x20000;

  ring_driver(plain_memory& memory, std::uint16_t size) : memory_(memory), size_(size) {}

  [[nodiscard]] virtio::queue_layout layout() const {
    return {size_, descriptors_at, available_at, used_at};
  }

  void set_descriptor(std::uint16_t index, virtio::virtq_desc descriptor) {
    memory_.put(descriptors_at + 16ULL * index, descriptor);
  }

  // Makes the chain starting at `head` available.
  void publish(std::uint16_t head) {
    const auto index = memory_.get<std::uint16_t>(available_at + 2);
    memory_.put<std::uint16_t>(available_at + 4 + 2ULL * (index % size_), head);
    memory_.put<std::uint16_t>(available_at + 2, static_cast<std::uint16_t>(index + 1));
  }

  void set_available_index(std::uint16_t index) { memory_.put(available_at + 2, index); }
  void set_available_flags(std::uint16_t flags) { memory_.put(available_at, flags); }
  void set_used_event(std::uint16_t index) {
    memory_.put<std::uint16_t>(available_at + 4 + 2ULL * size_, index);
  }

  [[nodiscard]] std::uint16_t used_index() { return memory_.get<std::uint16_t>(used_at + 2); }
  [[nodiscard]] std::uint16_t avail_event() {
    return memory_.get<std::uint16_t>(used_at + 4 + 8ULL * size_);
  }

  struct used_element {
    std::uint32_t id;
    std::uint32_t length;
  };
  [[nodiscard]] used_element used(std::uint16_t slot) {
    return memory_.get<used_element>(used_at + 4 + 8ULL * (slot % size_));
  }

private:
  plain_memory& memory_;
  std::uint16_t size_;
};

} // namespace compactor::testing
