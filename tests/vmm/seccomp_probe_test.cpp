// The seccomp filters of a running machine, under KVM with the probe guest: the vCPU and
// event-loop threads are filtered unless machine_config::seccomp is false, and a device whose
// host side makes a forbidden call (as a device taken over by a guest might) ends the process
// with forbidden_system_call_exit_status.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <compactor/devices/exit_device.hpp>
#include <compactor/devices/i8042.hpp>
#include <compactor/devices/uart_16550.hpp>
#include <compactor/hypervisors/kvm.hpp>
#include <compactor/virtio/block.hpp>
#include <compactor/virtio/mmio_device.hpp>
#include <compactor/vmm/machine.hpp>

#include "forked_child.hpp"
#include "vmm/vmm_probe_image.hpp"

using namespace compactor;
using namespace std::chrono_literals;
using testing::run_in_child;

namespace {

using uart = devices::uart_16550<devices::string_output>;

vmm::machine_config probe_config(bool seccomp, unsigned vcpus = 1) {
  vmm::machine_config config;
  config.vcpus = vcpus;
  config.memory_size = 64 * vmm::layout::mib;
  config.timeout = 20s;
  config.start_all_vcpus_at_entry = true;
  config.log = [](std::string_view) {};
  config.seccomp = seccomp;
  return config;
}

// Opens a file when the guest writes its port: the port the unknown-port probe writes first.
struct opening_device {
  static constexpr std::string_view name = "opening";
  static constexpr std::array<vmm::port_range, 1> ports = {vmm::port_range{0x1234, 1}};
  std::shared_ptr<std::atomic<bool>> opened = std::make_shared<std::atomic<bool>>(false);

  void io_in(std::uint16_t, std::span<std::uint8_t> data) { std::ranges::fill(data, 0xff); }
  void io_out(std::uint16_t, std::span<const std::uint8_t>) {
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
      ::close(fd);
      *opened = true;
    }
  }
};

// A disk whose reads open a file, served on the device's event-loop thread.
class opening_disk {
public:
  [[nodiscard]] std::uint64_t size_bytes() const { return 64 * 512; }
  [[nodiscard]] bool read_only() const { return true; }
  [[nodiscard]] std::string_view id() const { return "opening"; }
  bool read(std::uint64_t, const std::vector<iovec>& buffers) {
    const int fd = ::open("/dev/zero", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return false;
    }
    const bool filled = ::readv(fd, buffers.data(), static_cast<int>(buffers.size())) >= 0;
    ::close(fd);
    return filled;
  }
  bool write(std::uint64_t, const std::vector<iovec>&) { return false; }
  bool flush() { return true; }
};

std::string refusal(std::string_view role) {
  return fmt::format("compactor: a VMM thread ({}) made system call {} (openat), which its "
                     "seccomp filter forbids\n",
                     role, SYS_openat);
}

} // namespace

TEST_CASE("seccomp under KVM: every vCPU thread is filtered by default, none without seccomp",
          "[kvm][needs-kvm]") {
  using probe_machine = vmm::machine<uart, devices::i8042, devices::exit_device>;
  const unsigned before = testing::filtered_threads();
  for (const bool seccomp : {true, false}) {
    constexpr unsigned vcpus = 2;
    probe_machine machine(probe_config(seccomp, vcpus), uart(devices::string_output{}),
                          devices::i8042{}, devices::exit_device{});
    machine.load_linux(testing::probe_image, {}, "probe=hang", vmm::x86::boot_entry::linux_64);
    unsigned seen = 0;
    std::jthread watcher([&] {
      // Without filters the count stays at 0; half a second is plenty for the threads to start.
      testing::eventually(
          [&] {
            seen = testing::filtered_threads() - before;
            return seen == vcpus;
          },
          seccomp ? 5s : 500ms);
      machine.stop();
    });
    const auto report = machine.run();
    watcher.join();
    INFO("seccomp " << seccomp << ": " << report.summary());
    CHECK(report.outcome == vmm::run_outcome::stopped);
    CHECK(seen == (seccomp ? vcpus : 0));
  }
}

TEST_CASE("seccomp under KVM: a device that opens a file on a vCPU thread ends the process with "
          "the documented status, and runs on with seccomp off",
          "[kvm][needs-kvm]") {
  using machine_type =
      vmm::machine<uart, devices::i8042, devices::exit_device, opening_device>;
  const auto boot = [](bool seccomp) {
    return run_in_child([seccomp] {
      opening_device device;
      const auto opened = device.opened;
      machine_type machine(probe_config(seccomp), uart(devices::string_output{}),
                           devices::i8042{}, devices::exit_device{}, std::move(device));
      machine.load_linux(testing::probe_image, {}, "probe=unknown-port",
                         vmm::x86::boot_entry::linux_64);
      const auto report = machine.run();
      testing::say(report.summary() + (*opened ? ", opened\n" : "\n"));
      return report.process_exit_status();
    });
  };

  const auto filtered = boot(true);
  INFO(filtered.stderr_text);
  CHECK(filtered.exit_status == vmm::forbidden_system_call_exit_status);
  CHECK(filtered.stderr_text == refusal("vCPU"));

  const auto unfiltered = boot(false);
  INFO(unfiltered.stderr_text);
  CHECK(unfiltered.exit_status == 0);
  CHECK(unfiltered.stderr_text == "guest exited with status 0, opened\n");
}

TEST_CASE("seccomp under KVM: a virtio disk whose backend opens a file on the event-loop thread "
          "ends the process with the documented status",
          "[kvm][needs-kvm]") {
  using disk = virtio::mmio_device<virtio::block_device<opening_disk>>;
  using machine_type = vmm::machine<uart, devices::i8042, devices::exit_device, disk>;
  const auto boot = [](bool seccomp) {
    return run_in_child([seccomp] {
      devices::string_output console;
      machine_type machine(probe_config(seccomp), uart(console), devices::i8042{},
                           devices::exit_device{}, disk(opening_disk{}));
      machine.load_linux(testing::probe_image, {}, "probe=virtio-blk",
                         vmm::x86::boot_entry::linux_64);
      const auto report = machine.run();
      testing::say(report.summary() + "\n" + console.text());
      return report.process_exit_status();
    });
  };

  const auto filtered = boot(true);
  INFO(filtered.stderr_text);
  CHECK(filtered.exit_status == vmm::forbidden_system_call_exit_status);
  CHECK(filtered.stderr_text == refusal("device event loop"));

  // Without filters the read goes through: the probe reads sector 0 (zeros).
  const auto unfiltered = boot(false);
  INFO(unfiltered.stderr_text);
  CHECK_THAT(unfiltered.stderr_text, Catch::Contains("blk read 0 "));
}

TEST_CASE("seccomp under KVM: the console input thread forwards stdin under its filter",
          "[kvm][needs-kvm]") {
  using probe_machine = vmm::machine<uart, devices::i8042, devices::exit_device>;
  const auto result = run_in_child([] {
    int pipe_fds[2];
    if (::pipe(pipe_fds) != 0 || ::dup2(pipe_fds[0], STDIN_FILENO) < 0) {
      return 90;
    }
    ::close(pipe_fds[0]);
    static_cast<void>(::write(pipe_fds[1], "x", 1));

    const unsigned before = testing::filtered_threads();
    probe_machine machine(probe_config(true), uart(devices::string_output{}), devices::i8042{},
                          devices::exit_device{});
    machine.load_linux(testing::probe_image, {}, "probe=hang", vmm::x86::boot_entry::linux_64);
    unsigned seen = 0;
    {
      hypervisors::detail::console_input<probe_machine, uart> input(machine, true);
      std::jthread watcher([&] {
        testing::eventually([&] {
          seen = testing::filtered_threads() - before;
          return seen == 2;
        });
        ::close(pipe_fds[1]); // end of input: the thread forwards what came and ends
        std::this_thread::sleep_for(50ms);
        machine.stop();
      });
      machine.run();
    }
    std::uint8_t received = 0;
    machine.device<uart>().io_in(0x3f8, std::span(&received, 1));
    testing::say(fmt::format("filtered threads {}, received {:c}\n", seen,
                             static_cast<char>(received)));
    return 0;
  });
  INFO(result.stderr_text);
  CHECK(result.exit_status == 0);
  CHECK(result.stderr_text == "filtered threads 2, received x\n");
}
