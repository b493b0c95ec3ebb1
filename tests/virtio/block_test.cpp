// virtio-blk through the MMIO transport, as a guest driver would use it: registers for set-up,
// a split queue in plain memory for requests, a real file behind the device.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <array>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <compactor/backends/raw_file.hpp>
#include <compactor/virtio/block.hpp>
#include <compactor/virtio/mmio_transport.hpp>

#include "plain_memory.hpp"

using namespace compactor::virtio;
using compactor::backends::raw_file;
using compactor::testing::plain_memory;
using compactor::testing::ring_driver;

namespace {

constexpr std::uint16_t queue_size = 16;
constexpr std::size_t disk_sectors = 64;

class disk_image {
public:
  disk_image() {
    char name[] = "/tmp/compactor-blk-XXXXXX";
    const int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    path_ = name;
    std::ofstream file(path_, std::ios::binary);
    for (std::size_t sector = 0; sector < disk_sectors; ++sector) {
      file << std::string(sector_size, static_cast<char>('A' + sector % 26));
    }
  }
  ~disk_image() { std::filesystem::remove(path_); }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  [[nodiscard]] std::string sector(std::size_t index) const {
    std::ifstream file(path_, std::ios::binary);
    file.seekg(static_cast<std::streamoff>(index * sector_size));
    std::string bytes(sector_size, '\0');
    file.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    return bytes;
  }

private:
  std::filesystem::path path_;
};

// A guest driver's view: the transport's registers and one request queue.
struct blk_guest {
  plain_memory memory{0, 1 << 20};
  ring_driver driver{memory, queue_size};
  int interrupts = 0;
  block_device<raw_file> device;
  mmio_transport<block_device<raw_file>, plain_memory> transport{device, memory,
                                                                 [this] { ++interrupts; }};

  blk_guest(const disk_image& disk, bool read_only) : device(raw_file(disk.path(), read_only)) {}

  std::uint32_t read_register(std::uint32_t offset) {
    std::uint32_t value = 0;
    transport.read(offset, std::as_writable_bytes(std::span(&value, 1)));
    return value;
  }

  void write_register(std::uint32_t offset, std::uint32_t value) {
    transport.write(offset, std::as_bytes(std::span(&value, 1)));
  }

  // The driver initialisation sequence of virtio 1.2, 3.1.1.
  void initialise(std::uint64_t features) {
    write_register(mmio::Status, 0);
    write_register(mmio::Status, STATUS_ACKNOWLEDGE);
    write_register(mmio::Status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
    write_register(mmio::DriverFeaturesSel, 0);
    write_register(mmio::DriverFeatures, static_cast<std::uint32_t>(features));
    write_register(mmio::DriverFeaturesSel, 1);
    write_register(mmio::DriverFeatures, static_cast<std::uint32_t>(features >> 32));
    write_register(mmio::Status, STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK);
    REQUIRE((read_register(mmio::Status) & STATUS_FEATURES_OK) != 0);

    const auto layout = driver.layout();
    write_register(mmio::QueueSel, 0);
    write_register(mmio::QueueNum, layout.size);
    write_register(mmio::QueueDescLow, static_cast<std::uint32_t>(layout.descriptor_table));
    write_register(mmio::QueueDriverLow, static_cast<std::uint32_t>(layout.available_ring));
    write_register(mmio::QueueDeviceLow, static_cast<std::uint32_t>(layout.used_ring));
    write_register(mmio::QueueReady, 1);
    REQUIRE(read_register(mmio::QueueReady) == 1);
    write_register(mmio::Status,
                   STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
  }

  static constexpr std::uint64_t header_at = ring_driver::data_at;
  static constexpr std::uint64_t data_at = ring_driver::data_at + 0x1000;
  static constexpr std::uint64_t status_at = ring_driver::data_at + 0x8000;

  // Submits one request (header, optional data, status) and returns the status byte.
  std::uint8_t request(std::uint32_t type, std::uint64_t sector, std::uint32_t data_length,
                       bool device_writes_data) {
    memory.put(header_at, std::array<std::uint64_t, 2>{type, sector});
    memory.put<std::uint8_t>(status_at, 0xee);
    std::uint16_t next = 0;
    driver.set_descriptor(next, {header_at, 16, VIRTQ_DESC_F_NEXT, 1});
    if (data_length > 0) {
      const std::uint16_t flags =
          VIRTQ_DESC_F_NEXT | (device_writes_data ? VIRTQ_DESC_F_WRITE : std::uint16_t{0});
      driver.set_descriptor(++next, {data_at, data_length, flags, 2});
    }
    driver.set_descriptor(++next, {status_at, 1, VIRTQ_DESC_F_WRITE, 0});
    driver.publish(0);
    write_register(mmio::QueueNotify, 0);
    return memory.get<std::uint8_t>(status_at);
  }

  std::string data(std::size_t length) {
    auto bytes = memory.host_span(data_at, length);
    return {reinterpret_cast<const char*>(bytes.data()), bytes.size()};
  }

  void fill_data(char value, std::size_t length) {
    std::memset(memory.host_span(data_at, length).data(), value, length);
  }
};

constexpr std::uint64_t modern = feature_bit(VIRTIO_F_VERSION_1);

} // namespace

TEST_CASE("virtio-blk: identification registers and configuration space", "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);

  CHECK(guest.read_register(mmio::MagicValue) == 0x74726976);
  CHECK(guest.read_register(mmio::Version) == 2);
  CHECK(guest.read_register(mmio::DeviceID) == 2);
  CHECK(guest.read_register(mmio::QueueNumMax) == max_queue_size);

  guest.write_register(mmio::DeviceFeaturesSel, 1);
  CHECK((guest.read_register(mmio::DeviceFeatures) & 1) == 1); // VERSION_1 is bit 32
  guest.write_register(mmio::DeviceFeaturesSel, 0);
  CHECK((guest.read_register(mmio::DeviceFeatures) & (1u << VIRTIO_BLK_F_RO)) == 0);

  CHECK(guest.read_register(mmio::Config) == disk_sectors); // capacity, low word
  CHECK(guest.read_register(mmio::Config + 20) == sector_size);
}

TEST_CASE("virtio-blk: reads sector 0, writes sector 1, flushes and names itself", "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);
  guest.initialise(modern);

  CHECK(guest.request(VIRTIO_BLK_T_IN, 0, sector_size, true) == VIRTIO_BLK_S_OK);
  CHECK(guest.data(sector_size) == disk.sector(0));
  CHECK(guest.driver.used(0).length == sector_size + 1);
  CHECK(guest.interrupts == 1);
  CHECK((guest.read_register(mmio::InterruptStatus) & INTERRUPT_USED_BUFFER) != 0);
  guest.write_register(mmio::InterruptACK, INTERRUPT_USED_BUFFER);
  CHECK(guest.read_register(mmio::InterruptStatus) == 0);

  guest.fill_data('z', sector_size);
  CHECK(guest.request(VIRTIO_BLK_T_OUT, 1, sector_size, false) == VIRTIO_BLK_S_OK);
  CHECK(disk.sector(1) == std::string(sector_size, 'z'));
  CHECK(disk.sector(2) == std::string(sector_size, 'C'));

  CHECK(guest.request(VIRTIO_BLK_T_FLUSH, 0, 0, false) == VIRTIO_BLK_S_OK);

  CHECK(guest.request(VIRTIO_BLK_T_GET_ID, 0, blk_id_bytes, true) == VIRTIO_BLK_S_OK);
  const auto name = disk.path().filename().string();
  CHECK(guest.data(name.size()) == name);
}

TEST_CASE("virtio-blk: a read-only disk refuses writes and the file is unchanged", "[unit]") {
  disk_image disk;
  blk_guest guest(disk, true);
  guest.write_register(mmio::DeviceFeaturesSel, 0);
  CHECK((guest.read_register(mmio::DeviceFeatures) & (1u << VIRTIO_BLK_F_RO)) != 0);
  guest.initialise(modern | feature_bit(VIRTIO_BLK_F_RO));

  guest.fill_data('z', sector_size);
  CHECK(guest.request(VIRTIO_BLK_T_OUT, 1, sector_size, false) == VIRTIO_BLK_S_IOERR);
  CHECK(disk.sector(1) == std::string(sector_size, 'B'));
  CHECK(guest.request(VIRTIO_BLK_T_IN, 1, sector_size, true) == VIRTIO_BLK_S_OK);
}

TEST_CASE("virtio-blk: requests beyond the disk or of partial sectors fail, unknown types are "
          "unsupported",
          "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);
  guest.initialise(modern);

  CHECK(guest.request(VIRTIO_BLK_T_IN, disk_sectors, sector_size, true) == VIRTIO_BLK_S_IOERR);
  CHECK(guest.request(VIRTIO_BLK_T_IN, disk_sectors - 1, 2 * sector_size, true) ==
        VIRTIO_BLK_S_IOERR);
  CHECK(guest.request(VIRTIO_BLK_T_IN, ~std::uint64_t{0}, sector_size, true) ==
        VIRTIO_BLK_S_IOERR);
  CHECK(guest.request(VIRTIO_BLK_T_OUT, 0, 100, false) == VIRTIO_BLK_S_IOERR);
  CHECK(guest.request(99, 0, 0, false) == VIRTIO_BLK_S_UNSUPP);
  CHECK(guest.device.malformed_requests() == 4);
}

TEST_CASE("virtio-blk: a malformed chain comes back used with nothing written", "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);
  guest.initialise(modern);

  guest.driver.set_descriptor(0, {blk_guest::header_at, 16, VIRTQ_DESC_F_NEXT, 0}); // a loop
  guest.driver.publish(0);
  guest.write_register(mmio::QueueNotify, 0);

  CHECK(guest.driver.used_index() == 1);
  CHECK(guest.driver.used(0).length == 0);
  CHECK(guest.device.malformed_requests() == 1);

  // The queue still serves well-formed requests afterwards.
  CHECK(guest.request(VIRTIO_BLK_T_IN, 2, sector_size, true) == VIRTIO_BLK_S_OK);
  CHECK(guest.data(sector_size) == disk.sector(2));
}

TEST_CASE("virtio-mmio: feature negotiation needs VERSION_1 and a subset of the offer",
          "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);
  const std::uint32_t before_features = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
  guest.write_register(mmio::Status, STATUS_ACKNOWLEDGE);
  guest.write_register(mmio::Status, before_features);

  SECTION("a legacy driver") {
    guest.write_register(mmio::DriverFeaturesSel, 1);
    guest.write_register(mmio::DriverFeatures, 0);
  }
  SECTION("a feature the device did not offer") {
    guest.write_register(mmio::DriverFeaturesSel, 1);
    guest.write_register(mmio::DriverFeatures, 1 | (1u << 3));
  }
  guest.write_register(mmio::Status, before_features | STATUS_FEATURES_OK);

  CHECK((guest.read_register(mmio::Status) & STATUS_FEATURES_OK) == 0);
  guest.write_register(mmio::Status, before_features | STATUS_DRIVER_OK);
  CHECK((guest.read_register(mmio::Status) & STATUS_DRIVER_OK) == 0);
}

TEST_CASE("virtio-mmio: bad queue set-ups are refused and set-up is frozen once running",
          "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);

  guest.write_register(mmio::QueueSel, 0);
  guest.write_register(mmio::QueueNum, 12); // not a power of two
  guest.write_register(mmio::QueueDescLow, ring_driver::descriptors_at);
  guest.write_register(mmio::QueueDriverLow, ring_driver::available_at);
  guest.write_register(mmio::QueueDeviceLow, ring_driver::used_at);
  guest.write_register(mmio::QueueReady, 1);
  CHECK(guest.read_register(mmio::QueueReady) == 0);

  guest.write_register(mmio::QueueNum, queue_size);
  guest.write_register(mmio::QueueDescHigh, 1); // beyond guest memory
  guest.write_register(mmio::QueueReady, 1);
  CHECK(guest.read_register(mmio::QueueReady) == 0);

  guest.write_register(mmio::QueueSel, 1); // blk has a single queue
  CHECK(guest.read_register(mmio::QueueNumMax) == 0);

  guest.initialise(modern);
  const auto rejected = guest.transport.rejected_accesses();
  guest.write_register(mmio::QueueNum, 2);
  guest.write_register(mmio::QueueDescLow, 0x50000);
  CHECK(guest.transport.rejected_accesses() == rejected + 2);
  CHECK(guest.request(VIRTIO_BLK_T_IN, 3, sector_size, true) == VIRTIO_BLK_S_OK);
  CHECK(guest.data(sector_size) == disk.sector(3));
}

TEST_CASE("virtio-mmio: writing 0 to Status resets the device and its queues", "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);
  guest.initialise(modern);
  REQUIRE(guest.request(VIRTIO_BLK_T_IN, 0, sector_size, true) == VIRTIO_BLK_S_OK);

  guest.write_register(mmio::Status, 0);

  CHECK(guest.read_register(mmio::Status) == 0);
  CHECK(guest.read_register(mmio::QueueReady) == 0);
  CHECK(guest.read_register(mmio::InterruptStatus) == 0);
  const auto used_before = guest.driver.used_index();
  guest.write_register(mmio::QueueNotify, 0); // not running: ignored
  CHECK(guest.driver.used_index() == used_before);
}

TEST_CASE("virtio-mmio: a status write that clears bits without a reset is ignored", "[unit]") {
  disk_image disk;
  blk_guest guest(disk, false);
  guest.write_register(mmio::Status, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
  guest.write_register(mmio::Status, STATUS_ACKNOWLEDGE);
  CHECK(guest.read_register(mmio::Status) == (STATUS_ACKNOWLEDGE | STATUS_DRIVER));
}
