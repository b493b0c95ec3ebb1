// virtio-net (virtio 1.2, 5.1) over a frame backend such as backends::tap: one receive and one
// transmit queue, MAC address in configuration space, checksum and segmentation offloads
// passed through when the guest accepts them.
#pragma once

#include <linux/if_tun.h>

#include <array>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/virtio/chain_buffers.hpp>
#include <compactor/virtio/mmio_transport.hpp>
#include <compactor/virtio/split_queue.hpp>

namespace compactor::virtio {

template <typename Backend>
concept frame_backend = requires(Backend& backend, const Backend& const_backend,
                                 const std::vector<iovec>& buffers, unsigned flags) {
  { const_backend.fd() } -> std::same_as<int>; // readable when frames wait
  { backend.receive(buffers) } -> std::same_as<std::size_t>;
  { backend.send(buffers) } -> std::same_as<bool>;
  backend.set_offloads(flags);
};

// Feature bits (5.1.3).
inline constexpr unsigned VIRTIO_NET_F_CSUM = 0;
inline constexpr unsigned VIRTIO_NET_F_GUEST_CSUM = 1;
inline constexpr unsigned VIRTIO_NET_F_MAC = 5;
inline constexpr unsigned VIRTIO_NET_F_GUEST_TSO4 = 7;
inline constexpr unsigned VIRTIO_NET_F_GUEST_TSO6 = 8;
inline constexpr unsigned VIRTIO_NET_F_HOST_TSO4 = 11;
inline constexpr unsigned VIRTIO_NET_F_HOST_TSO6 = 12;
inline constexpr unsigned VIRTIO_NET_F_STATUS = 16;
inline constexpr std::uint16_t VIRTIO_NET_S_LINK_UP = 1;

// struct virtio_net_hdr (5.1.6) as used with VIRTIO_F_VERSION_1: num_buffers is always there.
inline constexpr std::size_t net_header_size = 12;
inline constexpr std::size_t num_buffers_offset = 10;

using mac_address = std::array<std::uint8_t, 6>;

template <typename Backend>
class net_device {
  static_assert(frame_backend<Backend>,
                "a frame backend needs fd() (readable when frames wait), receive(iovecs) "
                "returning the frame size or 0, send(iovecs) returning false when refused, and "
                "set_offloads(TUN_F_* flags)");

public:
  static constexpr std::uint32_t device_id = 1;
  static constexpr std::size_t queue_count = 2;
  static constexpr std::string_view name = "net";
  static constexpr std::size_t receive_queue = 0;
  static constexpr std::size_t transmit_queue = 1;

  // Frames waiting in the backend are for the receive queue (see mmio_device).
  static constexpr std::size_t input_queue = receive_queue;

  // `offloads`: offer checksum and segmentation offloads (the default); without them every
  // frame crosses complete, which is slower but rules the offload paths out when debugging.
  net_device(Backend backend, const mac_address& mac, bool offloads = true)
      : backend_(std::move(backend)), mac_(mac), offloads_(offloads) {}

  [[nodiscard]] Backend& backend() noexcept { return backend_; }
  [[nodiscard]] int input_fd() const { return backend_.fd(); }

  [[nodiscard]] std::uint64_t device_features() const {
    const std::uint64_t basic = feature_bit(VIRTIO_NET_F_MAC) | feature_bit(VIRTIO_NET_F_STATUS);
    if (!offloads_) {
      return basic;
    }
    return basic | feature_bit(VIRTIO_NET_F_CSUM) | feature_bit(VIRTIO_NET_F_GUEST_CSUM) |
           feature_bit(VIRTIO_NET_F_HOST_TSO4) | feature_bit(VIRTIO_NET_F_HOST_TSO6) |
           feature_bit(VIRTIO_NET_F_GUEST_TSO4) | feature_bit(VIRTIO_NET_F_GUEST_TSO6);
  }

  // struct virtio_net_config (5.1.4): mac, status.
  void read_config(std::uint32_t offset, std::span<std::byte> out) const {
    std::array<std::byte, 8> config{};
    std::memcpy(config.data(), mac_.data(), mac_.size());
    const std::uint16_t status = VIRTIO_NET_S_LINK_UP;
    std::memcpy(config.data() + 6, &status, sizeof status);
    if (offset < config.size()) {
      std::memcpy(out.data(), config.data() + offset, std::min(out.size(), config.size() - offset));
    }
  }

  void write_config(std::uint32_t, std::span<const std::byte>) {} // the MAC is not writable

  // The tap may hand the guest only the offloads the guest accepted (5.1.6.4).
  void activate(std::uint64_t features) {
    unsigned offloads = 0;
    if ((features & feature_bit(VIRTIO_NET_F_GUEST_CSUM)) != 0) {
      offloads |= TUN_F_CSUM;
      if ((features & feature_bit(VIRTIO_NET_F_GUEST_TSO4)) != 0) {
        offloads |= TUN_F_TSO4;
      }
      if ((features & feature_bit(VIRTIO_NET_F_GUEST_TSO6)) != 0) {
        offloads |= TUN_F_TSO6;
      }
    }
    backend_.set_offloads(offloads);
  }

  void reset() { backend_.set_offloads(0); }

  // Queue 0: the driver added receive buffers, or the backend has frames (the machine calls
  // this when the tap becomes readable). Queue 1: the driver queued frames to send.
  template <guest_memory Memory>
  bool process(std::size_t queue_index, split_queue<Memory>& queue, Memory& memory) {
    return queue_index == receive_queue ? receive(queue, memory) : transmit(queue, memory);
  }

  // Frames the backend refused, and frames or chains refused as malformed.
  [[nodiscard]] std::uint64_t dropped_frames() const noexcept { return dropped_frames_; }
  // Whether frames may be waiting in the backend for want of receive buffers: the guest's
  // ring is full, so nothing is read and the backend holds them (back-pressure).
  [[nodiscard]] bool receive_blocked() const noexcept { return receive_blocked_; }

private:
  template <guest_memory Memory>
  bool transmit(split_queue<Memory>& queue, Memory& memory) {
    bool used = false;
    while (auto chain = queue.pop()) {
      if (!chain->ok()) {
        count_drop(chain->malformed);
      } else {
        const auto buffers = map_chain(memory, *chain);
        if (buffers.readable.size() < net_header_size || buffers.writable.size() != 0) {
          count_drop("transmit chain without a header, or with device-writable buffers");
        } else if (!backend_.send(buffers.readable.iovecs())) {
          count_drop("the tap refused a frame");
        }
      }
      queue.push_used(chain->head, 0);
      used = true;
    }
    return used;
  }

  // Reads frames straight into the guest's buffers while both are available. A frame never
  // waits in this process: without a free buffer, it stays in the tap's queue.
  template <guest_memory Memory>
  bool receive(split_queue<Memory>& queue, Memory& memory) {
    bool used = false;
    receive_blocked_ = false;
    for (;;) {
      auto chain = queue.pop();
      if (!chain) {
        receive_blocked_ = true;
        return used;
      }
      if (!chain->ok() || chain->buffers.empty()) {
        count_drop(chain->ok() ? "empty receive chain" : chain->malformed);
        queue.push_used(chain->head, 0);
        used = true;
        continue;
      }
      auto buffers = map_chain(memory, *chain);
      if (buffers.writable.size() < net_header_size || buffers.readable.size() != 0) {
        count_drop("receive chain too small for the header, or with readable buffers");
        queue.push_used(chain->head, 0);
        used = true;
        continue;
      }
      const std::size_t size = backend_.receive(buffers.writable.iovecs());
      if (size == 0) {
        queue.unpop();
        return used;
      }
      // 5.1.6.4.2: one buffer per frame without VIRTIO_NET_F_MRG_RXBUF.
      const std::uint16_t num_buffers = 1;
      buffers.writable.copy_in(num_buffers_offset, std::as_bytes(std::span(&num_buffers, 1)));
      queue.push_used(chain->head, static_cast<std::uint32_t>(size));
      used = true;
    }
  }

  void count_drop(std::string_view why) {
    if (dropped_frames_++ == 0) {
      fmt::print(stderr, "virtio-net: {} (further drops are counted, not logged)\n", why);
    }
  }

  Backend backend_;
  mac_address mac_;
  bool offloads_ = true;
  std::uint64_t dropped_frames_ = 0;
  bool receive_blocked_ = false;
};

} // namespace compactor::virtio
