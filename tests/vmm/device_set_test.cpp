#include <catch2/catch.hpp>

#include <compactor/devices/exit_device.hpp>
#include <compactor/devices/i8042.hpp>
#include <compactor/devices/uart_16550.hpp>
#include <compactor/vmm/device_set.hpp>

#include "../devices/device_harness.hpp"

using namespace compactor;

namespace {

// A register file behind an MMIO window that asks the machine for its address and IRQ, as a
// virtio-mmio transport does.
struct mmio_registers {
  static constexpr std::string_view name = "mmio-registers";
  static constexpr std::uint64_t mmio_size = 0x1000;
  static constexpr bool wants_irq = true;

  std::array<std::uint8_t, 0x1000> bytes{};
  int vm_fd = -2;

  void attach(vmm::device_context& context, const vmm::device_slot&) { vm_fd = context.vm_fd(); }
  void mmio_read(std::uint64_t offset, std::span<std::uint8_t> data) {
    std::copy_n(bytes.begin() + static_cast<std::ptrdiff_t>(offset), data.size(), data.begin());
  }
  void mmio_write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    std::copy(data.begin(), data.end(), bytes.begin() + static_cast<std::ptrdiff_t>(offset));
  }
  [[nodiscard]] std::string cmdline_fragment(const vmm::device_slot& slot) const {
    return vmm::virtio_mmio_cmdline(slot);
  }
};

struct fixed_window {
  static constexpr std::string_view name = "fixed-window";
  static constexpr std::uint64_t mmio_size = 0x2000;
  static constexpr std::uint64_t mmio_base = 0xd0000000;
  void mmio_read(std::uint64_t, std::span<std::uint8_t> data) {
    std::fill(data.begin(), data.end(), 0x11);
  }
  void mmio_write(std::uint64_t, std::span<const std::uint8_t>) {}
};

struct no_handlers {
  static constexpr std::string_view name = "broken";
  static constexpr std::array<vmm::port_range, 1> ports = {vmm::port_range{0x100, 1}};
};

using uart = devices::uart_16550<devices::string_output>;
using set = vmm::device_set<uart, devices::i8042, devices::exit_device, mmio_registers,
                            mmio_registers>;

} // namespace

TEST_CASE("device set: windows and IRQ lines are assigned at compile time", "[unit]") {
  STATIC_REQUIRE(set::slots[0].irq == 4);
  STATIC_REQUIRE(set::slots[1].irq == -1);
  STATIC_REQUIRE(set::slots[3].irq == 5);
  STATIC_REQUIRE(set::slots[4].irq == 6);
  STATIC_REQUIRE(set::slots[3].mmio_base == 0xd0000000);
  STATIC_REQUIRE(set::slots[4].mmio_base == 0xd0001000);
  STATIC_REQUIRE(set::slots[4].mmio_size == 0x1000);

  // A fixed window keeps its address; assigned ones go around it.
  using mixed = vmm::device_set<fixed_window, mmio_registers>;
  STATIC_REQUIRE(mixed::slots[0].mmio_base == 0xd0000000);
  STATIC_REQUIRE(mixed::slots[1].mmio_base == 0xd0002000);

  STATIC_REQUIRE(vmm::device<mmio_registers>);
  STATIC_REQUIRE_FALSE(vmm::device<no_handlers>);
  STATIC_REQUIRE_FALSE(vmm::detail::ports_disjoint<devices::i8042, devices::i8042>());
  STATIC_REQUIRE(vmm::detail::ports_disjoint<uart, devices::i8042, devices::exit_device>());
}

TEST_CASE("device set: the command line lists each device's entry in order", "[unit]") {
  devices::string_output output;
  set devices(uart(output), devices::i8042{}, devices::exit_device{}, mmio_registers{},
              mmio_registers{});
  CHECK(devices.cmdline() ==
        "console=ttyS0 reboot=k i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd "
        "virtio_mmio.device=4K@0xd0000000:5 virtio_mmio.device=4K@0xd0001000:6");
}

TEST_CASE("device set: accesses reach the device that claims them", "[unit]") {
  testing::device_harness harness;
  devices::string_output output;
  set devices(uart(output), devices::i8042{}, devices::exit_device{}, mmio_registers{},
              mmio_registers{});
  devices.attach(harness.context);

  std::uint8_t byte = 'k';
  devices.io(0x3f8, true, std::span(&byte, 1));
  CHECK(output.text() == "k");

  byte = 9;
  devices.io(0x501, true, std::span(&byte, 1));
  REQUIRE(harness.ends.size() == 1);
  CHECK(harness.ends[0].status == 9);

  std::uint8_t word[4] = {1, 2, 3, 4};
  devices.mmio(0xd0001010, true, word);
  CHECK(devices.get<4>().bytes[0x10] == 1);
  CHECK(devices.get<3>().bytes[0x10] == 0);
  std::uint8_t back[4] = {};
  devices.mmio(0xd0001010, false, back);
  CHECK(back[3] == 4);
  CHECK(devices.get<3>().vm_fd == -1);
  CHECK(devices.unclaimed().mmio_reads == 0);

  // A host thread hands the UART input under the device's lock; the guest then reads it.
  const std::uint8_t typed[] = {'z'};
  CHECK(devices.with_device<uart>([&](uart& device) { return device.receive(typed); }) == 1);
  std::uint8_t received = 0;
  devices.io(0x3f8, false, std::span(&received, 1));
  CHECK(received == 'z');
}

TEST_CASE("device set: unclaimed ports and addresses read as ones and are logged once",
          "[unit]") {
  testing::device_harness harness;
  devices::string_output output;
  set devices(uart(output), devices::i8042{}, devices::exit_device{}, mmio_registers{},
              mmio_registers{});
  devices.attach(harness.context);

  std::uint8_t data[4] = {};
  devices.io(0x80, false, data);
  CHECK(data[0] == 0xff);
  CHECK(data[3] == 0xff);
  devices.io(0x80, true, data);
  REQUIRE(harness.logs.size() == 1);
  CHECK_THAT(harness.logs[0], Catch::Contains("0x0080"));

  std::uint8_t mmio[8] = {};
  devices.mmio(0xe0000000, false, mmio);
  CHECK(mmio[7] == 0xff);
  // An access that starts in a window but runs past its end belongs to nobody.
  devices.mmio(0xd0001ffc, false, mmio);
  CHECK(mmio[0] == 0xff);
  CHECK(harness.logs.size() == 3);
  CHECK_THAT(harness.logs[1], Catch::Contains("0xe0000000"));

  const auto counts = devices.unclaimed();
  CHECK(counts.port_reads == 1);
  CHECK(counts.port_writes == 1);
  CHECK(counts.mmio_reads == 2);
}
