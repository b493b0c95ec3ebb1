// virtio-blk as a device of the VMM's machine, driven under KVM by the probe guest's
// virtio driver (tests/vmm/probe/probe.cpp, probe=virtio-blk): MMIO registers through KVM
// exits, notifications through ioeventfd, completions through irqfd, a real file behind it.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>
#include <regex>
#include <thread>

#include <compactor/backends/raw_file.hpp>
#include <compactor/backends/tap.hpp>
#include <compactor/devices/exit_device.hpp>
#include <compactor/devices/i8042.hpp>
#include <compactor/devices/uart_16550.hpp>
#include <compactor/virtio/block.hpp>
#include <compactor/virtio/mmio_device.hpp>
#include <compactor/virtio/net.hpp>
#include <compactor/vmm/machine.hpp>

#include "../support/network_namespace.hpp"
#include "tap_wire.hpp"
#include "vmm/vmm_probe_image.hpp"

using namespace compactor;
using namespace std::chrono_literals;

namespace {

using uart = devices::uart_16550<devices::string_output>;
using virtio_blk = virtio::mmio_device<virtio::block_device<backends::raw_file>>;
using blk_machine = vmm::machine<uart, devices::i8042, devices::exit_device, virtio_blk>;

class disk_image {
public:
  disk_image() {
    char name[] = "/tmp/compactor-probe-disk-XXXXXX";
    const int fd = ::mkstemp(name);
    REQUIRE(fd >= 0);
    ::close(fd);
    path_ = name;
    std::mt19937 random(std::random_device{}());
    std::ofstream file(path_, std::ios::binary);
    for (int i = 0; i < 64 * 512; ++i) {
      file.put(static_cast<char>(random()));
    }
  }
  ~disk_image() { std::filesystem::remove(path_); }

  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

  [[nodiscard]] std::string sector(std::size_t index) const {
    std::ifstream file(path_, std::ios::binary);
    file.seekg(static_cast<std::streamoff>(index * 512));
    std::string bytes(512, '\0');
    file.read(bytes.data(), 512);
    return bytes;
  }

private:
  std::filesystem::path path_;
};

std::uint32_t fnv1a(const std::string& bytes) {
  std::uint32_t hash = 2166136261u;
  for (const char byte : bytes) {
    hash = (hash ^ static_cast<std::uint8_t>(byte)) * 16777619u;
  }
  return hash;
}

std::string run_probe(const disk_image& disk, bool read_only) {
  devices::string_output console;
  vmm::machine_config config;
  config.memory_size = 64 * vmm::layout::mib;
  config.timeout = 60s;
  config.log = [](std::string_view) {};
  blk_machine machine(config, uart(console), devices::i8042{}, devices::exit_device{},
                      virtio_blk(backends::raw_file(disk.path(), read_only)));
  machine.load_linux(testing::probe_image, {}, "probe=virtio-blk",
                     vmm::x86::boot_entry::linux_64);
  const auto report = machine.run();
  INFO(report.summary() << "\n" << console.text());
  REQUIRE(report.outcome == vmm::run_outcome::exited);
  REQUIRE(report.exit_status == 0);
  return console.text();
}

} // namespace

TEST_CASE("virtio-mmio device: the machine assigns a window and IRQ and declares them to Linux",
          "[kvm][needs-kvm]") {
  disk_image disk;
  vmm::machine_config config;
  config.memory_size = 64 * vmm::layout::mib;
  blk_machine machine(config, uart(devices::string_output{}), devices::i8042{},
                      devices::exit_device{}, virtio_blk(backends::raw_file(disk.path(), true)));
  CHECK_THAT(machine.kernel_cmdline("console=ttyS0"),
             Catch::Contains("virtio_mmio.device=4K@0xd0000000:5") &&
                 Catch::EndsWith("console=ttyS0"));
}

TEST_CASE("virtio-blk under KVM: the probe's driver reads sector 0, writes sector 1, flushes, "
          "and is interrupted",
          "[kvm][needs-kvm]") {
  disk_image disk;
  const auto sector_0 = disk.sector(0);

  const auto console = run_probe(disk, false);

  INFO(console);
  CHECK_THAT(console, Catch::Contains("blk ready"));
  CHECK_THAT(console, Catch::Contains(fmt::format("blk read 0 {:#x}\n", fnv1a(sector_0))));
  CHECK_THAT(console, Catch::Contains("blk write 0\n"));
  CHECK_THAT(console, Catch::Contains("blk flush 0\n"));
  CHECK_THAT(console, Catch::Contains("blk beyond 1\n")); // VIRTIO_BLK_S_IOERR
  CHECK_THAT(console, Catch::Contains("blk irqs 1\n"));
  CHECK_THAT(disk.sector(1), Catch::StartsWith("written by the probe written by"));
  CHECK(disk.sector(0) == sector_0);
}

TEST_CASE("virtio-blk under KVM: a read-only disk refuses the probe's write", "[kvm][needs-kvm]") {
  disk_image disk;
  const auto sector_1 = disk.sector(1);

  const auto console = run_probe(disk, true);

  INFO(console);
  CHECK_THAT(console, Catch::Contains("blk read 0 "));
  CHECK_THAT(console, Catch::Contains("blk write 1\n"));
  CHECK(disk.sector(1) == sector_1);
}

TEST_CASE("virtio-net under KVM: the probe's driver sends a frame out of the tap and receives "
          "one from it",
          "[kvm][needs-kvm][needs-root]") {
  using virtio_net = virtio::mmio_device<virtio::net_device<backends::tap>>;
  using net_machine = vmm::machine<uart, devices::i8042, devices::exit_device, virtio_net>;
  constexpr std::uint16_t ethertype = 0x88b5;
  const virtio::mac_address mac = {0x02, 0x00, 0x00, 0x00, 0x00, 0x42};

  testing::network_namespace netns;
  devices::string_output console;
  vmm::machine_config config;
  config.memory_size = 64 * vmm::layout::mib;
  config.timeout = 60s;
  config.log = [](std::string_view) {};
  net_machine machine(config, uart(console), devices::i8042{}, devices::exit_device{},
                      virtio_net(backends::tap("ptap0"), mac));
  testing::wire host("ptap0", ethertype);
  machine.load_linux(testing::probe_image, {}, "probe=virtio-net",
                     vmm::x86::boot_entry::linux_64);

  vmm::run_report report;
  std::thread guest([&] { report = machine.run(); });
  const auto sent = host.receive();
  std::string reply(reinterpret_cast<const char*>(mac.data()), 6);
  reply += std::string("\x02\x00\x00\x00\x00\x01\x88\xb5", 8) + "host says hello";
  reply.resize(60, '\0');
  host.send(reply);
  guest.join();

  INFO(report.summary() << "\n" << console.text());
  CHECK_THAT(sent, Catch::Contains("probe says hello"));
  CHECK(sent.substr(6, 6) == std::string(reinterpret_cast<const char*>(mac.data()), 6));
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 0);
  CHECK_THAT(console.text(), Catch::Contains("net tx done\nnet rx host says hello\n"));
}
