// What the virtio code needs from guest memory: a bounds check and a host view of a range.
//
// The VMM's guest memory satisfies this concept; so does any plain buffer that maps guest
// physical addresses to host bytes, which is how the ring code is tested without KVM.
#pragma once

#include <concepts>
#include <cstddef>
#include <cstdint>
#include <span>

namespace compactor::virtio {

template <typename Memory>
concept guest_memory = requires(Memory& memory, std::uint64_t address, std::uint64_t length) {
  // True when [address, address + length) lies in guest RAM, without overflow.
  { memory.contains(address, length) } -> std::same_as<bool>;
  // The host bytes of that range; only called after `contains` said yes.
  { memory.host_span(address, length) } -> std::same_as<std::span<std::byte>>;
};

// A range of guest memory in one piece, as a descriptor names it.
struct guest_buffer {
  std::uint64_t address = 0;
  std::uint32_t length = 0;
  bool device_writable = false;
};

} // namespace compactor::virtio
