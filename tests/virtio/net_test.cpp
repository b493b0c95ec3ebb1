// virtio-net on a real tap inside a network namespace the test creates: frames the guest
// queues come out of the tap, frames sent into the tap land in the guest's buffers.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <array>
#include <string>
#include <vector>

#include <compactor/backends/tap.hpp>
#include <compactor/virtio/mmio_transport.hpp>
#include <compactor/virtio/net.hpp>

#include "../support/network_namespace.hpp"
#include "plain_memory.hpp"
#include "tap_wire.hpp"

using namespace compactor::virtio;
using compactor::backends::tap;
using compactor::testing::network_namespace;
using compactor::testing::plain_memory;
using compactor::testing::ring_driver;
using compactor::testing::wire;

namespace {

constexpr std::uint16_t queue_size = 8;
constexpr mac_address guest_mac = {0x52, 0x54, 0x00, 0x12, 0x34, 0x56};
constexpr std::uint16_t test_ethertype = 0x88b5; // IEEE local experimental

// One queue's rings for each of the device's two queues, in one guest memory.
struct net_guest {
  plain_memory memory{0, 1 << 22};
  ring_driver rx{memory, queue_size};
  // The transmit rings sit 64 KiB above the receive rings.
  static constexpr std::uint64_t tx_offset = 0x100000;
  int interrupts = 0;
  net_device<tap> device;
  mmio_transport<net_device<tap>, plain_memory> transport;

  explicit net_guest(tap backend)
      : device(std::move(backend), guest_mac),
        transport(device, memory, [this] { ++interrupts; }) {}

  void write_register(std::uint32_t offset, std::uint32_t value) {
    transport.write(offset, std::as_bytes(std::span(&value, 1)));
  }
  std::uint32_t read_register(std::uint32_t offset) {
    std::uint32_t value = 0;
    transport.read(offset, std::as_writable_bytes(std::span(&value, 1)));
    return value;
  }

  void set_up_queue(std::uint32_t index, std::uint64_t offset) {
    write_register(mmio::QueueSel, index);
    write_register(mmio::QueueNum, queue_size);
    write_register(mmio::QueueDescLow, static_cast<std::uint32_t>(ring_driver::descriptors_at + offset));
    write_register(mmio::QueueDriverLow, static_cast<std::uint32_t>(ring_driver::available_at + offset));
    write_register(mmio::QueueDeviceLow, static_cast<std::uint32_t>(ring_driver::used_at + offset));
    write_register(mmio::QueueReady, 1);
    REQUIRE(read_register(mmio::QueueReady) == 1);
  }

  void initialise(std::uint64_t features) {
    write_register(mmio::Status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write_register(mmio::DriverFeaturesSel, 0);
    write_register(mmio::DriverFeatures, static_cast<std::uint32_t>(features));
    write_register(mmio::DriverFeaturesSel, 1);
    write_register(mmio::DriverFeatures, static_cast<std::uint32_t>(features >> 32));
    write_register(mmio::Status, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    set_up_queue(0, 0);
    set_up_queue(1, tx_offset);
    write_register(mmio::Status,
                   STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  }

  // Posts receive buffer `slot` (2 KiB each) on the receive queue.
  void post_receive_buffer(std::uint16_t slot) {
    rx.set_descriptor(slot, {0x200000 + 0x800ULL * slot, 0x800, VIRTQ_DESC_F_WRITE, 0});
    rx.publish(slot);
  }

  std::string received_frame(std::uint16_t used_slot) {
    const auto element = rx.used(used_slot);
    auto bytes = memory.host_span(0x200000 + 0x800ULL * element.id, element.length);
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  // The received frames of the test's EtherType, in ring order. The kernel sends frames of
  // its own into a tap that comes up (IPv6 neighbour discovery), which are left out.
  std::vector<std::string> received_test_frames() {
    std::vector<std::string> frames;
    for (std::uint16_t slot = 0; slot < rx.used_index(); ++slot) {
      auto frame = received_frame(slot);
      const std::size_t type_at = net_header_size + 12;
      if (frame.size() > type_at + 1 &&
          static_cast<std::uint8_t>(frame[type_at]) == (test_ethertype >> 8) &&
          static_cast<std::uint8_t>(frame[type_at + 1]) == (test_ethertype & 0xff)) {
        frames.push_back(std::move(frame));
      }
    }
    return frames;
  }

  // Queues `frame` (with a zero header) for transmission through descriptor `slot`.
  void transmit(std::uint16_t slot, const std::string& frame) {
    const std::uint64_t at = 0x300000 + 0x800ULL * slot;
    std::vector<std::byte> bytes(net_header_size);
    for (char c : frame) {
      bytes.push_back(static_cast<std::byte>(c));
    }
    std::memcpy(memory.host_span(at, bytes.size()).data(), bytes.data(), bytes.size());
    const auto descriptor = virtq_desc{at, static_cast<std::uint32_t>(bytes.size()), 0, 0};
    memory.put(ring_driver::descriptors_at + tx_offset + 16ULL * slot, descriptor);
    const auto index = memory.get<std::uint16_t>(ring_driver::available_at + tx_offset + 2);
    memory.put<std::uint16_t>(ring_driver::available_at + tx_offset + 4 + 2 * (index % queue_size),
                              slot);
    memory.put<std::uint16_t>(ring_driver::available_at + tx_offset + 2,
                              static_cast<std::uint16_t>(index + 1));
    write_register(mmio::QueueNotify, net_device<tap>::transmit_queue);
  }
};

std::string ethernet_frame(const mac_address& destination, const std::string& payload) {
  std::string frame;
  frame.append(reinterpret_cast<const char*>(destination.data()), 6);
  frame.append("\x02\x00\x00\x00\x00\x01", 6); // a locally administered source
  frame.push_back(static_cast<char>(test_ethertype >> 8));
  frame.push_back(static_cast<char>(test_ethertype & 0xff));
  frame += payload;
  frame.resize(std::max<std::size_t>(frame.size(), 60), '\0'); // the Ethernet minimum
  return frame;
}

constexpr std::uint64_t modern = feature_bit(VIRTIO_F_VERSION_1);

} // namespace

TEST_CASE("virtio-net: the MAC address and link status are in configuration space",
          "[unit]") {
  struct no_frames {
    int fd() const { return -1; }
    std::size_t receive(const std::vector<iovec>&) { return 0; }
    bool send(const std::vector<iovec>&) { return true; }
    void set_offloads(unsigned) {}
  } backend;
  net_device<no_frames> device(std::move(backend), guest_mac);
  std::array<std::byte, 8> config{};
  device.read_config(0, config);
  CHECK(std::memcmp(config.data(), guest_mac.data(), 6) == 0);
  CHECK(static_cast<int>(config[6]) == VIRTIO_NET_S_LINK_UP);
}

TEST_CASE("virtio-net: offloads are offered unless switched off", "[unit]") {
  struct no_frames {
    int fd() const { return -1; }
    std::size_t receive(const std::vector<iovec>&) { return 0; }
    bool send(const std::vector<iovec>&) { return true; }
    void set_offloads(unsigned) {}
  };
  const net_device<no_frames> with(no_frames{}, guest_mac);
  const net_device<no_frames> without(no_frames{}, guest_mac, false);
  CHECK((with.device_features() & feature_bit(VIRTIO_NET_F_CSUM)) != 0);
  CHECK((with.device_features() & feature_bit(VIRTIO_NET_F_GUEST_TSO4)) != 0);
  CHECK((without.device_features() & feature_bit(VIRTIO_NET_F_CSUM)) == 0);
  CHECK((without.device_features() & feature_bit(VIRTIO_NET_F_GUEST_CSUM)) == 0);
  CHECK((without.device_features() & feature_bit(VIRTIO_NET_F_MAC)) != 0);
}

TEST_CASE("virtio-net: a frame the guest sends comes out of the tap", "[needs-root]") {
  network_namespace netns;
  tap backend("ctap0");
  CHECK(backend.created());
  wire host("ctap0", test_ethertype);
  net_guest guest(std::move(backend));
  guest.initialise(modern | feature_bit(VIRTIO_NET_F_MAC));

  const auto frame = ethernet_frame({0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, "hello from the guest");
  guest.transmit(0, frame);

  CHECK(host.receive() == frame);
  CHECK(guest.memory.get<std::uint16_t>(ring_driver::used_at + net_guest::tx_offset + 2) == 1);
  CHECK(guest.device.dropped_frames() == 0);
}

TEST_CASE("virtio-net: a frame sent into the tap lands in the guest's buffer with its header",
          "[needs-root]") {
  network_namespace netns;
  tap backend("ctap0");
  wire host("ctap0", test_ethertype);
  net_guest guest(std::move(backend));
  guest.initialise(modern);
  for (std::uint16_t slot = 0; slot < queue_size; ++slot) {
    guest.post_receive_buffer(slot);
  }

  const auto frame = ethernet_frame(guest_mac, "hello from the host");
  host.send(frame);
  guest.write_register(mmio::QueueNotify, net_device<tap>::receive_queue); // tap readable

  const auto frames = guest.received_test_frames();
  REQUIRE(frames.size() == 1);
  const auto& received = frames.front();
  REQUIRE(received.size() == net_header_size + frame.size());
  CHECK(received.substr(net_header_size) == frame);
  CHECK(received[num_buffers_offset] == 1);
  CHECK(guest.interrupts >= 1);
}

TEST_CASE("virtio-net: without receive buffers frames wait in the tap, then arrive in order",
          "[needs-root]") {
  network_namespace netns;
  tap backend("ctap0");
  wire host("ctap0", test_ethertype);
  net_guest guest(std::move(backend));
  guest.initialise(modern);

  for (char n = '1'; n <= '3'; ++n) {
    host.send(ethernet_frame(guest_mac, std::string("frame ") + n));
  }
  guest.write_register(mmio::QueueNotify, net_device<tap>::receive_queue);
  CHECK(guest.rx.used_index() == 0);
  CHECK(guest.device.receive_blocked());

  for (std::uint16_t slot = 0; slot < queue_size; ++slot) {
    guest.post_receive_buffer(slot);
  }
  guest.write_register(mmio::QueueNotify, net_device<tap>::receive_queue);

  const auto frames = guest.received_test_frames();
  REQUIRE(frames.size() == 3);
  for (std::size_t n = 0; n < frames.size(); ++n) {
    CHECK_THAT(frames[n], Catch::Contains(std::string("frame ") + static_cast<char>('1' + n)));
  }
  CHECK(guest.device.dropped_frames() == 0);
}

TEST_CASE("tap: a tap it created disappears with it; an existing tap is kept", "[needs-root]") {
  network_namespace netns;
  {
    tap created("ctap0");
    CHECK(created.created());
    CHECK(::if_nametoindex("ctap0") != 0);
  }
  CHECK(::if_nametoindex("ctap0") == 0);

  REQUIRE(std::system("ip tuntap add dev ctap1 mode tap vnet_hdr") == 0);
  {
    tap existing("ctap1");
    CHECK_FALSE(existing.created());
  }
  CHECK(::if_nametoindex("ctap1") != 0);
}

TEST_CASE("tap: a name that cannot be an interface is refused with a clear message", "[unit]") {
  CHECK_THROWS_WITH(tap("a-name-longer-than-fifteen"), Catch::Contains("longer than 15"));
  CHECK_THROWS_WITH(tap(""), Catch::Contains("empty"));
}
