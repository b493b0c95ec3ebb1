// Our own VMM as the hypervisor: the machine of include/compactor/vmm with the standard
// device set of a Compactor guest.
//
//   COM1 console -> the host's console descriptor
//   i8042        -> `reboot=k` ends the run
//   CMOS RTC     -> the host's UTC time
//   exit device  -> the init's status and boot marker (guest/protocol.hpp)
//   virtio-blk   -> up to four disks (empty slots are invisible to the guest)
//   virtio-net   -> a tap, when one is given
//
// Every thread of the run but the caller's runs under a seccomp filter unless
// kvm_options::seccomp is false (vmm/seccomp.hpp).
#pragma once

#include <poll.h>
#include <sys/eventfd.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/backends/raw_file.hpp>
#include <compactor/backends/tap.hpp>
#include <compactor/devices/cmos_rtc.hpp>
#include <compactor/devices/exit_device.hpp>
#include <compactor/devices/i8042.hpp>
#include <compactor/devices/serial_output.hpp>
#include <compactor/devices/uart_16550.hpp>
#include <compactor/hypervisors/guest_spec.hpp>
#include <compactor/hypervisors/qemu.hpp>
#include <compactor/support/error.hpp>
#include <compactor/virtio/block.hpp>
#include <compactor/virtio/mmio_device.hpp>
#include <compactor/virtio/net.hpp>
#include <compactor/vmm/machine.hpp>
#include <compactor/vmm/seccomp.hpp>

namespace compactor::hypervisors {

inline constexpr std::size_t max_disks = 4;

template <unsigned Slot>
using disk_slot = virtio::mmio_device<virtio::block_device<backends::raw_file>, Slot>;
using network_slot = virtio::mmio_device<virtio::net_device<backends::tap>>;

using console_uart = devices::uart_16550<devices::fd_output>;
using standard_machine =
    vmm::machine<console_uart, devices::i8042, devices::cmos_rtc, devices::exit_device,
                 disk_slot<0>, disk_slot<1>, disk_slot<2>, disk_slot<3>, network_slot>;

// A locally administered MAC address derived from the tap's name, so a guest keeps its address
// from one run to the next.
inline virtio::mac_address mac_for(const std::string& tap_name) {
  std::uint32_t hash = 2166136261u;
  for (const char c : tap_name) {
    hash = (hash ^ static_cast<std::uint8_t>(c)) * 16777619u;
  }
  return {0x02, 0xc0, static_cast<std::uint8_t>(hash >> 24), static_cast<std::uint8_t>(hash >> 16),
          static_cast<std::uint8_t>(hash >> 8), static_cast<std::uint8_t>(hash)};
}

// Ctrl-A then x ends an interactive guest, as in QEMU's console.
inline constexpr std::uint8_t console_escape = 0x01;
inline constexpr std::uint8_t console_escape_quit = 'x';

namespace detail {

// Feeds the host's stdin to the guest's COM1 while the guest runs: in raw mode on a terminal
// (restored however the run ends), and until end of file on a pipe. Runs on its own thread,
// under the console-input seccomp filter when `filtered`.
template <typename Machine, typename Uart>
class console_input {
public:
  console_input(Machine& machine, bool filtered) : machine_(machine) {
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) {
      throw_errno("eventfd");
    }
    if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved_) == 0) {
      termios raw = saved_;
      ::cfmakeraw(&raw);
      raw.c_oflag = saved_.c_oflag; // keep "\n" -> "\r\n" for the guest's output
      raw_ = ::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
    }
    try {
      thread_ = vmm::seccomp::start_thread(vmm::seccomp::thread_role::console_input, filtered,
                                           [this] { forward(); });
    } catch (...) {
      restore_terminal();
      throw;
    }
  }

  ~console_input() {
    const std::uint64_t one = 1;
    static_cast<void>(::write(wake_.get(), &one, sizeof one));
    thread_.join();
    restore_terminal();
  }

  console_input(const console_input&) = delete;
  console_input& operator=(const console_input&) = delete;

private:
  void restore_terminal() {
    if (raw_) {
      ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    }
  }

  void forward() {
    bool escape = false;
    for (;;) {
      pollfd watched[2] = {{STDIN_FILENO, POLLIN, 0}, {wake_.get(), POLLIN, 0}};
      if (::poll(watched, 2, -1) < 0) {
        if (errno == EINTR) {
          continue;
        }
        return;
      }
      if (watched[1].revents != 0) {
        return;
      }
      std::uint8_t buffer[256];
      const ssize_t size = ::read(STDIN_FILENO, buffer, sizeof buffer);
      if (size <= 0) {
        return; // end of input: the guest runs on without it
      }
      std::vector<std::uint8_t> bytes;
      for (ssize_t n = 0; n < size; ++n) {
        const auto byte = buffer[n];
        if (std::exchange(escape, false)) {
          if (byte == console_escape_quit) {
            machine_.stop();
            return;
          }
          bytes.push_back(console_escape);
        }
        if (byte == console_escape && raw_) {
          escape = true;
          continue;
        }
        bytes.push_back(byte);
      }
      deliver(bytes);
    }
  }

  // The UART's FIFO holds 16 bytes; the rest waits until the guest has read some.
  void deliver(std::span<const std::uint8_t> bytes) {
    while (!bytes.empty()) {
      const std::size_t accepted = machine_.devices().template with_device<Uart>(
          [&](Uart& uart) { return uart.receive(bytes); });
      bytes = bytes.subspan(accepted);
      if (!bytes.empty()) {
        pollfd wake{wake_.get(), POLLIN, 0};
        if (::poll(&wake, 1, 1) > 0) {
          return;
        }
      }
    }
  }

  Machine& machine_;
  unique_fd wake_;
  termios saved_{};
  bool raw_ = false;
  std::thread thread_;
};

} // namespace detail

struct kvm_options {
  int console_fd = STDOUT_FILENO;
  std::optional<std::chrono::milliseconds> timeout;
  std::function<void(std::string_view)> log; // the machine's warnings; default stderr
  bool seccomp = true; // filter the VMM's threads (vmm/seccomp.hpp)
  // The host kernel's teardown of the VM runs in a keeper process after the run, not in the
  // caller's (vmm/deferred_teardown.hpp): the caller has the guest's status that much sooner.
  bool deferred_teardown = true;
};

class kvm_runner {
public:
  explicit kvm_runner(kvm_options options = {}) : options_(std::move(options)) {}

  run_result run(const guest_spec& spec) {
    if (spec.disks.size() > max_disks) {
      throw compactor::error(fmt::format("at most {} disks", max_disks));
    }
    vmm::machine_config config;
    config.vcpus = spec.vcpus;
    config.memory_size = std::uint64_t{spec.memory_mib} * vmm::layout::mib;
    config.timeout = options_.timeout;
    config.log = options_.log;
    config.seccomp = options_.seccomp;
    config.deferred_teardown = options_.deferred_teardown;
    // The serial output's thread starts while its argument is built, before the machine.
    const vmm::seccomp::filter_scope device_threads(options_.seccomp);

    const auto disk = [&]<unsigned Slot>() {
      return Slot < spec.disks.size()
                 ? disk_slot<Slot>(backends::raw_file(spec.disks[Slot].path,
                                                      spec.disks[Slot].read_only))
                 : disk_slot<Slot>();
    };
    auto network = spec.tap ? network_slot(backends::tap(*spec.tap), mac_for(*spec.tap),
                                           spec.net_offloads)
                            : network_slot();

    standard_machine machine(
        config, devices::uart_16550(devices::fd_output(unique_fd(::dup(options_.console_fd)))),
        devices::i8042{}, devices::cmos_rtc{}, devices::exit_device{},
        disk.template operator()<0>(), disk.template operator()<1>(),
        disk.template operator()<2>(), disk.template operator()<3>(), std::move(network));
    machine_ = &machine;
    machine.load_linux(spec.kernel, spec.initrd,
                       fmt::format("panic=-1 quiet {}", // the machine adds console= and reboot=
                                   spec.guest_parameters));
    std::optional<detail::console_input<standard_machine, console_uart>> input;
    if (spec.interactive) {
      input.emplace(machine, options_.seccomp);
    }
    const auto report = machine.run();
    input.reset();
    machine_ = nullptr;

    run_result result;
    if (report.outcome == vmm::run_outcome::exited) {
      result.status = report.exit_status;
    } else {
      result.failure = report.summary();
    }
    return result;
  }

  // Ends a running guest (from another thread).
  void stop() {
    if (auto* machine = machine_.load()) {
      machine->stop();
    }
  }

private:
  kvm_options options_;
  std::atomic<standard_machine*> machine_{nullptr};
};

} // namespace compactor::hypervisors
