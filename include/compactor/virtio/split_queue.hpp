// A split virtqueue as the device side sees it (virtio 1.2, 2.7).
//
// The driver (the guest) owns the descriptor table and the available ring; the device takes
// descriptor chains from the available ring and returns them through the used ring. Every
// value read from guest memory is untrusted: the chain walker bounds loops, indices, lengths
// and addresses, and a malformed chain is reported to the caller, which returns it to the used
// ring with nothing written, so a hostile driver can neither crash nor hang the device.
#pragma once

#include <atomic>
#include <bit>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <compactor/virtio/guest_memory.hpp>

namespace compactor::virtio {

static_assert(std::endian::native == std::endian::little,
              "virtio 1.x rings are little-endian; this code reads them in place on x86");

// virtio 1.2, 2.7.5: one entry of the descriptor table.
struct virtq_desc {
  std::uint64_t addr;
  std::uint32_t len;
  std::uint16_t flags;
  std::uint16_t next;
};
static_assert(sizeof(virtq_desc) == 16);

inline constexpr std::uint16_t VIRTQ_DESC_F_NEXT = 1;
inline constexpr std::uint16_t VIRTQ_DESC_F_WRITE = 2;
inline constexpr std::uint16_t VIRTQ_DESC_F_INDIRECT = 4;

// virtio 1.2, 2.7.7: the driver asks for no used-buffer notification.
inline constexpr std::uint16_t VIRTQ_AVAIL_F_NO_INTERRUPT = 1;

// The largest queue this device offers (QueueNumMax); virtio allows up to 32768.
inline constexpr std::uint16_t max_queue_size = 256;

// A chain taken from the available ring. `head` goes back in the used ring; `buffers` lists the
// driver-readable buffers first, then the device-writable ones, as 2.7.4.2 requires.
struct descriptor_chain {
  std::uint16_t head = 0;
  std::vector<guest_buffer> buffers;
  // Empty for a well-formed chain; otherwise why it was refused (for the device's log).
  std::string malformed;

  [[nodiscard]] bool ok() const noexcept { return malformed.empty(); }
};

// Where the driver placed the three parts of the queue, and how large it is.
struct queue_layout {
  std::uint16_t size = 0;
  std::uint64_t descriptor_table = 0;
  std::uint64_t available_ring = 0; // "driver area"
  std::uint64_t used_ring = 0;      // "device area"

  [[nodiscard]] std::uint64_t descriptor_table_bytes() const { return 16ULL * size; }
  // flags, idx, ring[size], used_event
  [[nodiscard]] std::uint64_t available_ring_bytes() const { return 6ULL + 2ULL * size; }
  // flags, idx, ring[size] of {id, len}, avail_event
  [[nodiscard]] std::uint64_t used_ring_bytes() const { return 6ULL + 8ULL * size; }
};

// Why a layout cannot be used, or nothing (virtio 1.2, 2.7: alignment 16/2/4, size a power of
// two up to the maximum, every part inside guest memory).
template <guest_memory Memory>
std::optional<std::string> check_layout(const queue_layout& layout, Memory& memory) {
  if (layout.size == 0 || layout.size > max_queue_size || !std::has_single_bit(layout.size)) {
    return fmt::format("queue size {} is not a power of two between 1 and {}", layout.size,
                       max_queue_size);
  }
  if (layout.descriptor_table % 16 != 0 || layout.available_ring % 2 != 0 ||
      layout.used_ring % 4 != 0) {
    return fmt::format("rings misaligned (descriptors {:#x}, available {:#x}, used {:#x})",
                       layout.descriptor_table, layout.available_ring, layout.used_ring);
  }
  if (!memory.contains(layout.descriptor_table, layout.descriptor_table_bytes()) ||
      !memory.contains(layout.available_ring, layout.available_ring_bytes()) ||
      !memory.contains(layout.used_ring, layout.used_ring_bytes())) {
    return fmt::format("rings outside guest memory (descriptors {:#x}, available {:#x}, "
                       "used {:#x}, size {})",
                       layout.descriptor_table, layout.available_ring, layout.used_ring,
                       layout.size);
  }
  return std::nullopt;
}

template <guest_memory Memory>
class split_queue {
public:
  // `layout` must have passed check_layout for `memory`.
  split_queue(Memory& memory, const queue_layout& layout, bool event_idx)
      : memory_(&memory), layout_(layout), event_idx_(event_idx) {
    descriptors_ = memory.host_span(layout.descriptor_table, layout.descriptor_table_bytes());
    available_ = memory.host_span(layout.available_ring, layout.available_ring_bytes());
    used_ = memory.host_span(layout.used_ring, layout.used_ring_bytes());
  }

  [[nodiscard]] std::uint16_t size() const noexcept { return layout_.size; }

  // Takes the next chain the driver made available, or nothing when the ring is empty. A
  // malformed chain comes back with `malformed` set; the caller returns it with `push_used`.
  std::optional<descriptor_chain> pop() {
    const std::uint16_t available_index = load_u16(available_, 2, std::memory_order_acquire);
    if (available_index == last_available_) {
      return std::nullopt;
    }

    // 2.7.6: a driver that publishes more entries than the queue holds is broken; answering
    // the excess would reuse heads the device still owns.
    if (static_cast<std::uint16_t>(available_index - last_available_) > layout_.size) {
      descriptor_chain broken;
      broken.malformed = fmt::format("available index jumped from {} to {} on a queue of {}",
                                     last_available_, available_index, layout_.size);
      last_available_ = available_index;
      broken_ = true;
      return broken;
    }

    const std::size_t slot = last_available_ % layout_.size;
    const std::uint16_t head = load_u16(available_, 4 + 2 * slot, std::memory_order_relaxed);
    ++last_available_;
    if (event_idx_) {
      // 2.7.10: avail_event tells the driver which index should trigger the next notification.
      store_u16(used_, 4 + 8ULL * layout_.size, last_available_, std::memory_order_release);
    }
    return walk_chain(head);
  }

  // Puts the chain that the last `pop` returned back at the head of the available ring, for a
  // device that took it but had nothing to put in it yet (a receive queue with no frame).
  void unpop() {
    --last_available_;
    if (event_idx_) {
      store_u16(used_, 4 + 8ULL * layout_.size, last_available_, std::memory_order_release);
    }
  }

  // Returns a chain to the driver with the number of bytes the device wrote into it.
  void push_used(std::uint16_t head, std::uint32_t written) {
    const std::size_t slot = used_index_ % layout_.size;
    std::uint32_t element[2] = {head, written};
    std::memcpy(used_.data() + 4 + 8 * slot, element, sizeof element);
    ++used_index_;
    // The element must be visible before the index that publishes it (2.7.8).
    store_u16(used_, 2, used_index_, std::memory_order_release);
  }

  // Whether the driver wants an interrupt for the used entries pushed since the last call
  // (2.7.7 without EVENT_IDX, 2.7.10 with it).
  bool should_notify() {
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const std::uint16_t old_index = signalled_used_;
    const std::uint16_t new_index = used_index_;
    signalled_used_ = new_index;
    if (!event_idx_) {
      const auto flags = load_u16(available_, 0, std::memory_order_acquire);
      return (flags & VIRTQ_AVAIL_F_NO_INTERRUPT) == 0 && old_index != new_index;
    }
    const std::uint16_t used_event =
        load_u16(available_, 4 + 2ULL * layout_.size, std::memory_order_acquire);
    return static_cast<std::uint16_t>(new_index - used_event - 1) <
           static_cast<std::uint16_t>(new_index - old_index);
  }

  // True once the driver violated the ring protocol itself (not just one chain); the device
  // then sets DEVICE_NEEDS_RESET (2.1.2).
  [[nodiscard]] bool broken() const noexcept { return broken_; }

private:
  static std::uint16_t load_u16(std::span<std::byte> area, std::size_t offset,
                                std::memory_order order) {
    auto* field = reinterpret_cast<std::uint16_t*>(area.data() + offset);
    return std::atomic_ref<std::uint16_t>(*field).load(order);
  }

  static void store_u16(std::span<std::byte> area, std::size_t offset, std::uint16_t value,
                        std::memory_order order) {
    auto* field = reinterpret_cast<std::uint16_t*>(area.data() + offset);
    std::atomic_ref<std::uint16_t>(*field).store(value, order);
  }

  virtq_desc read_descriptor(std::span<std::byte> table, std::size_t index) const {
    virtq_desc descriptor;
    std::memcpy(&descriptor, table.data() + index * sizeof(virtq_desc), sizeof descriptor);
    return descriptor;
  }

  // Follows a chain from `head` through the descriptor table and at most one indirect table
  // (2.7.5.3), checking every step.
  descriptor_chain walk_chain(std::uint16_t head) const {
    descriptor_chain chain;
    chain.head = head;
    const auto refuse = [&](std::string why) {
      chain.buffers.clear();
      chain.malformed = std::move(why);
      return chain;
    };

    if (head >= layout_.size) {
      return refuse(fmt::format("head {} is outside the queue of {}", head, layout_.size));
    }

    std::span<std::byte> table = descriptors_;
    std::size_t table_entries = layout_.size;
    std::size_t index = head;
    std::size_t steps = 0;
    std::uint64_t total_length = 0;
    bool in_indirect = false;
    bool seen_writable = false;

    for (;;) {
      // A chain visits each entry of its table at most once, so more steps than entries means
      // the `next` fields form a loop (2.7.5.2).
      if (++steps > table_entries) {
        return refuse(fmt::format("descriptor chain from head {} loops", head));
      }
      const virtq_desc descriptor = read_descriptor(table, index);

      if ((descriptor.flags & VIRTQ_DESC_F_INDIRECT) != 0) {
        if (in_indirect) {
          return refuse("an indirect table refers to another indirect table");
        }
        if ((descriptor.flags & VIRTQ_DESC_F_NEXT) != 0) {
          return refuse("a descriptor is both indirect and chained");
        }
        if (descriptor.len == 0 || descriptor.len % sizeof(virtq_desc) != 0 ||
            descriptor.len / sizeof(virtq_desc) > 65536) {
          return refuse(fmt::format("indirect table of {} bytes", descriptor.len));
        }
        if (!memory_->contains(descriptor.addr, descriptor.len)) {
          return refuse(fmt::format("indirect table at {:#x}+{:#x} is outside guest memory",
                                    descriptor.addr, descriptor.len));
        }
        table = memory_->host_span(descriptor.addr, descriptor.len);
        table_entries = descriptor.len / sizeof(virtq_desc);
        index = 0;
        steps = 0;
        in_indirect = true;
        continue;
      }

      const bool writable = (descriptor.flags & VIRTQ_DESC_F_WRITE) != 0;
      if (seen_writable && !writable) {
        return refuse("a driver-readable buffer follows a device-writable one");
      }
      seen_writable = seen_writable || writable;

      if (!memory_->contains(descriptor.addr, descriptor.len)) {
        return refuse(fmt::format("buffer {:#x}+{:#x} is outside guest memory", descriptor.addr,
                                  descriptor.len));
      }
      total_length += descriptor.len;
      if (total_length > UINT32_MAX) {
        return refuse("descriptor chain is longer than 4 GiB");
      }
      chain.buffers.push_back({descriptor.addr, descriptor.len, writable});

      if ((descriptor.flags & VIRTQ_DESC_F_NEXT) == 0) {
        return chain;
      }
      if (descriptor.next >= table_entries) {
        return refuse(fmt::format("next index {} is outside a table of {}", descriptor.next,
                                  table_entries));
      }
      index = descriptor.next;
    }
  }

  Memory* memory_;
  queue_layout layout_;
  bool event_idx_;
  std::span<std::byte> descriptors_;
  std::span<std::byte> available_;
  std::span<std::byte> used_;
  std::uint16_t last_available_ = 0;
  std::uint16_t used_index_ = 0;
  std::uint16_t signalled_used_ = 0;
  bool broken_ = false;
};

} // namespace compactor::virtio
