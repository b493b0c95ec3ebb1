// A KVM micro-VM whose devices are fixed at compile time:
//
//   using namespace compactor;
//   using vm = vmm::machine<devices::uart_16550<devices::fd_output>, devices::i8042,
//                           devices::exit_device>;
//   vmm::machine_config config;
//   config.memory_size = 256 * vmm::layout::mib;
//   vm machine(config, devices::uart_16550(devices::fd_output::to_stdout()),
//              devices::i8042{}, devices::exit_device{});
//   machine.load_linux(kernel_path, initrd_path, "quiet");   // device entries come first
//   const vmm::run_report report = machine.run();            // report.outcome, .exit_status
//   return report.process_exit_status();
//
// The machine owns the VM (in-kernel PIC/IOAPIC/LAPIC and PIT), guest RAM, one thread per
// vCPU, and the devices. Its threads run under seccomp filters (seccomp.hpp) unless
// machine_config::seccomp is false. A device type is added to the list, nothing else: see
// device.hpp for what it must provide.
#pragma once

#include <pthread.h>
#include <signal.h>

#include <atomic>
#include <concepts>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/vmm/device.hpp>
#include <compactor/vmm/deferred_teardown.hpp>
#include <compactor/vmm/device_set.hpp>
#include <compactor/vmm/guest_memory.hpp>
#include <compactor/vmm/kvm.hpp>
#include <compactor/vmm/run_outcome.hpp>
#include <compactor/vmm/seccomp.hpp>
#include <compactor/vmm/x86/cpuid.hpp>
#include <compactor/vmm/x86/layout.hpp>
#include <compactor/vmm/x86/linux_boot.hpp>
#include <compactor/vmm/x86/long_mode.hpp>
#include <compactor/vmm/x86/mptable.hpp>
#include <compactor/vmm/x86/msrs.hpp>

namespace compactor::vmm {

struct machine_config {
  unsigned vcpus = 1;
  std::uint64_t memory_size = 128 * layout::mib;
  // The run ends with run_outcome::timed_out after this long; none: no limit.
  std::optional<std::chrono::milliseconds> timeout;
  // Linux starts secondary vCPUs itself (INIT and SIPI), so by default they wait for that.
  // Test guests without an AP trampoline set this: every vCPU starts at the kernel entry.
  bool start_all_vcpus_at_entry = false;
  // Warnings about the guest (an unclaimed port, an ignored register write). By default they
  // go to stderr, one line each.
  std::function<void(std::string_view)> log;
  std::string kvm_device = "/dev/kvm";
  // Each vCPU thread, and each device thread started while the machine is built, loads a
  // seccomp filter that allows only the system calls it makes (seccomp.hpp). `log` runs on
  // vCPU threads: with filters, it may write and allocate, but not open files.
  bool seccomp = true;
  // When the machine is destroyed, a short-lived keeper process takes over the VM's last
  // descriptors, so the host kernel's teardown of the VM (tens of milliseconds on some hosts)
  // happens there and not in this process (deferred_teardown.hpp).
  bool deferred_teardown = false;
};

namespace detail {

// The signal that pulls a vCPU thread out of KVM_RUN. Its handler does nothing: the
// interruption itself (EINTR) is the point.
inline int vcpu_kick_signal() { return SIGRTMIN + 3; }

inline void install_kick_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction action {};
    action.sa_handler = [](int) {};
    sigemptyset(&action.sa_mask);
    action.sa_flags = 0; // no SA_RESTART: KVM_RUN must return EINTR
    if (::sigaction(vcpu_kick_signal(), &action, nullptr) != 0) {
      throw_errno("sigaction for the vCPU kick signal");
    }
  });
}

inline std::string_view internal_error_name(std::uint32_t suberror) {
  switch (suberror) {
  case KVM_INTERNAL_ERROR_EMULATION: return "instruction emulation failed";
  case KVM_INTERNAL_ERROR_SIMUL_EX: return "exception while delivering an exception";
  case KVM_INTERNAL_ERROR_DELIVERY_EV: return "event delivery failed";
  case KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: return "unexpected exit reason";
  default: return "internal error";
  }
}

} // namespace detail

template <device... Devices>
class machine {
public:
  using devices_type = device_set<Devices...>;
  static constexpr auto slots = devices_type::slots;

  explicit machine(machine_config config, Devices... devices)
      : config_(std::move(config)), devices_(std::move(devices)...), system_(config_.kvm_device),
        vm_(system_.create_vm()), memory_(config_.memory_size),
        context_([this](std::uint32_t line, bool level) { vm_.set_irq_line(line, level); },
                 [this](run_outcome outcome, std::optional<std::uint8_t> status,
                        std::string detail) { end_run(outcome, status, std::move(detail)); },
                 [this](std::string_view line) { log(line); }, vm_.fd(), &memory_) {
    if (config_.vcpus == 0 || config_.vcpus > x86::mptable_max_vcpus) {
      throw error(fmt::format("a machine has 1 to {} vCPUs, not {}", x86::mptable_max_vcpus,
                              config_.vcpus));
    }
    vm_.require(KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP");
    vm_.require(KVM_CAP_PIT2, "KVM_CAP_PIT2");
    vm_.require(KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT");
    vm_.require(KVM_CAP_EXT_CPUID, "KVM_CAP_EXT_CPUID");
    vm_.require(KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY");
    detail::install_kick_handler();

    if (vm_.check_extension(KVM_CAP_SET_TSS_ADDR) > 0) {
      vm_.set_tss_address(x86::kvm_tss_address);
    }
    if (vm_.check_extension(KVM_CAP_SET_IDENTITY_MAP_ADDR) > 0) {
      vm_.set_identity_map_address(x86::kvm_identity_map_address);
    }
    // Guest RAM before the irqchip and PIT: registered after them it took 4-9 ms on this
    // project's hosts, before them under 1.5 ms (benchmarks/vmm/bare_kvm --phases).
    std::uint32_t slot = 0;
    for (const auto& region : memory_.regions()) {
      vm_.set_user_memory_region(slot++, region.guest_address(), region.size(), region.host());
    }
    vm_.create_irqchip();
    vm_.create_pit();

    const auto supported = system_.supported_cpuid();
    const bool tsc_deadline_timer = system_.check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
    const auto msrs = x86::boot_msrs(system_.msr_index_list());
    vcpus_.reserve(config_.vcpus);
    for (unsigned index = 0; index < config_.vcpus; ++index) {
      auto& cpu = vcpus_.emplace_back(vm_.create_vcpu(index));
      cpu.set_cpuid(x86::cpuid_for_vcpu(supported, index, config_.vcpus, tsc_deadline_timer));
      if (!msrs.empty()) {
        cpu.set_msrs(msrs);
      }
      x86::configure_lapic_lints(cpu);
    }

    x86::write_long_mode_tables(memory_);
    x86::write_mptable(memory_, config_.vcpus);
    const seccomp::filter_scope device_threads(config_.seccomp);
    devices_.attach(context_);
  }

  explicit machine(machine_config config)
    requires(std::default_initializable<Devices> && ...)
      : machine(std::move(config), Devices{}...) {}

  machine(const machine&) = delete;
  machine& operator=(const machine&) = delete;
  ~machine() {
    stop_and_join();
    if (config_.deferred_teardown) {
      hand_teardown_to_keeper();
    }
  }

  [[nodiscard]] devices_type& devices() noexcept { return devices_; }
  template <typename D>
  [[nodiscard]] D& device() noexcept {
    return devices_.template get<D>();
  }
  [[nodiscard]] const guest_memory& memory() const noexcept { return memory_; }
  [[nodiscard]] int vm_fd() const noexcept { return vm_.fd(); }

  // The kernel command line: the devices' entries, then `extra`.
  [[nodiscard]] std::string kernel_cmdline(std::string_view extra) const {
    std::string line = devices_.cmdline();
    if (!extra.empty()) {
      line += line.empty() ? "" : " ";
      line += extra;
    }
    return line;
  }

  // Loads a kernel (ELF vmlinux or bzImage), an initrd (may be empty) and the command line
  // (the devices' entries are prepended), ready for run(). An ELF kernel with a PVH note is
  // entered through PVH unless `entry` says otherwise.
  const x86::linux_boot_layout& load_linux(
      std::span<const std::uint8_t> kernel, std::span<const std::uint8_t> initrd,
      std::string_view cmdline, x86::boot_entry entry = x86::boot_entry::automatic) {
    boot_ = x86::load_linux(memory_, kernel, initrd, kernel_cmdline(cmdline), entry);
    return *boot_;
  }

  const x86::linux_boot_layout& load_linux(
      const std::filesystem::path& kernel, const std::optional<std::filesystem::path>& initrd,
      std::string_view cmdline, x86::boot_entry entry = x86::boot_entry::automatic) {
    const auto kernel_bytes = x86::read_file(kernel);
    const auto initrd_bytes = initrd ? x86::read_file(*initrd) : std::vector<std::uint8_t>{};
    return load_linux(kernel_bytes, initrd_bytes, cmdline, entry);
  }

  // Drives interrupt line `line` of the in-kernel PIC and IOAPIC.
  void set_irq_line(std::uint32_t line, bool level) { vm_.set_irq_line(line, level); }

  // Runs the guest until it exits, resets, fails, times out or stop() is called; one run per
  // machine.
  run_report run() {
    if (!boot_) {
      throw error("nothing to run: load a kernel with load_linux() first");
    }
    if (started_.exchange(true)) {
      throw error("a machine runs once; create a new one for another run");
    }
    prepare_vcpus();

    start_ = std::chrono::steady_clock::now();
    {
      std::lock_guard lock(threads_mutex_);
      running_ = static_cast<unsigned>(vcpus_.size());
      for (auto& cpu : vcpus_) {
        threads_.emplace_back([this, &cpu] { vcpu_loop(cpu); });
      }
    }

    {
      std::unique_lock lock(end_mutex_);
      const auto ended = [this] { return report_.has_value(); };
      if (config_.timeout) {
        if (!end_condition_.wait_for(lock, *config_.timeout, ended)) {
          lock.unlock();
          end_run(run_outcome::timed_out, std::nullopt,
                  fmt::format("no exit within {} ms", config_.timeout->count()));
        }
      } else {
        end_condition_.wait(lock, ended);
      }
    }
    stop_and_join();
    devices_.flush();

    std::lock_guard lock(end_mutex_);
    if (report_->outcome == run_outcome::timed_out || report_->outcome == run_outcome::stopped) {
      report_->detail += " (" + vcpu_states() + ")";
    }
    return *report_;
  }

  // Ends a run from another thread (or a device); the first request decides the outcome.
  void stop() { end_run(run_outcome::stopped, std::nullopt, "stopped by the host"); }

  [[nodiscard]] unclaimed_access_counts unclaimed_accesses() const {
    return devices_.unclaimed();
  }

private:
  void prepare_vcpus() {
    for (auto& cpu : vcpus_) {
      const bool boots = cpu.index() == 0 || config_.start_all_vcpus_at_entry;
      if (boots && boot_->protocol == x86::boot_entry::pvh) {
        x86::enter_pvh(cpu, boot_->entry, boot_->zero_page);
      } else if (boots) {
        x86::enter_long_mode(cpu, boot_->entry, boot_->zero_page);
      }
      if (cpu.index() != 0 && config_.start_all_vcpus_at_entry) {
        cpu.set_mp_state(KVM_MP_STATE_RUNNABLE);
      }
    }
  }

  void vcpu_loop(vcpu& cpu) {
    try {
      if (config_.seccomp) {
        seccomp::install_filter(seccomp::thread_role::vcpu);
      }
      while (!ended_.load(std::memory_order_acquire)) {
        if (!cpu.run()) {
          continue; // kicked; the loop condition decides
        }
        handle_exit(cpu);
      }
    } catch (const std::exception& failure) {
      end_run(run_outcome::host_error, std::nullopt,
              fmt::format("vCPU {}: {}", cpu.index(), failure.what()));
    }
    std::lock_guard lock(end_mutex_);
    --running_;
    end_condition_.notify_all();
  }

  void handle_exit(vcpu& cpu) {
    auto& run = cpu.run_area();
    switch (run.exit_reason) {
    case KVM_EXIT_IO: {
      auto* base = reinterpret_cast<std::uint8_t*>(&run) + run.io.data_offset;
      const bool is_write = run.io.direction == KVM_EXIT_IO_OUT;
      for (std::uint32_t i = 0; i < run.io.count; ++i) {
        devices_.io(run.io.port, is_write, std::span(base + i * run.io.size, run.io.size));
      }
      return;
    }
    case KVM_EXIT_MMIO: {
      const auto length = std::min<std::uint32_t>(run.mmio.len, sizeof run.mmio.data);
      devices_.mmio(run.mmio.phys_addr, run.mmio.is_write != 0,
                    std::span(run.mmio.data, length));
      return;
    }
    case KVM_EXIT_INTR:
      return;
    case KVM_EXIT_SHUTDOWN:
      end_run(run_outcome::shutdown, std::nullopt,
              fmt::format("vCPU {} shut down (triple fault){}", cpu.index(), where(cpu)));
      return;
    case KVM_EXIT_FAIL_ENTRY:
      end_run(run_outcome::failed_entry, std::nullopt,
              fmt::format("vCPU {}: entry failed, hardware reason {:#x}", cpu.index(),
                          run.fail_entry.hardware_entry_failure_reason));
      return;
    case KVM_EXIT_INTERNAL_ERROR:
      end_run(run_outcome::internal_error, std::nullopt,
              fmt::format("vCPU {}: {} (KVM suberror {}){}", cpu.index(),
                          detail::internal_error_name(run.internal.suberror),
                          run.internal.suberror, where(cpu)));
      return;
    case KVM_EXIT_SYSTEM_EVENT:
      if (run.system_event.type == KVM_SYSTEM_EVENT_RESET) {
        end_run(run_outcome::reset, std::nullopt,
                fmt::format("vCPU {} requested a reset", cpu.index()));
      } else {
        end_run(run_outcome::shutdown, std::nullopt,
                fmt::format("vCPU {}: system event {}", cpu.index(), run.system_event.type));
      }
      return;
    default:
      end_run(run_outcome::unhandled_exit, std::nullopt,
              fmt::format("vCPU {}: KVM exit reason {} is not handled{}", cpu.index(),
                          run.exit_reason, where(cpu)));
      return;
    }
  }

  // Where each vCPU was when a run was cut short, for its report: "vCPU 0 at rip 0x...,
  // interrupts off, halted; vCPU 1 not started". A guest that hangs with interrupts off spins
  // on a lock or waits in a loop that no interrupt can end; one halted with interrupts on
  // waits for an interrupt that never came.
  std::string vcpu_states() const {
    std::string states;
    for (const auto& cpu : vcpus_) {
      states += fmt::format("{}vCPU {}", states.empty() ? "" : "; ", cpu.index());
      try {
        const auto state = cpu.mp_state();
        if (state == KVM_MP_STATE_UNINITIALIZED || state == KVM_MP_STATE_INIT_RECEIVED) {
          states += " not started";
          continue;
        }
        const auto registers = cpu.regs();
        constexpr std::uint64_t interrupt_flag = 1u << 9;
        states += fmt::format(" at rip {:#x}, interrupts {}", registers.rip,
                              registers.rflags & interrupt_flag ? "on" : "off");
        if (state == KVM_MP_STATE_HALTED) {
          states += ", halted";
        }
      } catch (const std::exception&) {
        states += " (registers unreadable)";
      }
    }
    return states;
  }

  // " at rip 0x..." for a report, or nothing when the registers cannot be read.
  static std::string where(const vcpu& cpu) {
    try {
      return fmt::format(" at rip {:#x}", cpu.regs().rip);
    } catch (const std::exception&) {
      return {};
    }
  }

  void end_run(run_outcome outcome, std::optional<std::uint8_t> status, std::string detail) {
    {
      std::lock_guard lock(end_mutex_);
      if (report_) {
        return;
      }
      report_ = run_report{outcome, status, std::move(detail),
                           std::chrono::steady_clock::now() - start_};
      ended_.store(true, std::memory_order_release);
    }
    end_condition_.notify_all();
    kick_all();
  }

  // Makes every vCPU thread leave KVM_RUN: immediate_exit catches a thread about to enter,
  // the signal one already inside (api.rst 5: immediate_exit).
  void kick_all() {
    std::lock_guard lock(threads_mutex_);
    for (auto& cpu : vcpus_) {
      cpu.run_area().immediate_exit = 1;
    }
    for (auto& thread : threads_) {
      ::pthread_kill(thread.native_handle(), detail::vcpu_kick_signal());
    }
  }

  // The vCPU descriptors hold the VM as firmly as its own descriptor: the keeper takes all.
  void hand_teardown_to_keeper() noexcept {
    try {
      std::vector<int> descriptors{vm_.fd()};
      for (const auto& cpu : vcpus_) {
        descriptors.push_back(cpu.fd());
      }
      teardown_keeper_.emplace(descriptors);
    } catch (const std::exception& failure) {
      log(fmt::format("the VM is torn down in this process: {}", failure.what()));
    }
  }

  void stop_and_join() {
    if (threads_.empty()) {
      return;
    }
    {
      std::lock_guard lock(end_mutex_);
      if (!report_) {
        report_ = run_report{run_outcome::stopped, std::nullopt, "machine destroyed",
                             std::chrono::steady_clock::now() - start_};
      }
      ended_.store(true, std::memory_order_release);
    }
    // A thread may be between its check of ended_ and KVM_RUN when a kick lands;
    // immediate_exit covers that, and kicking until all have left covers the rest.
    {
      std::unique_lock lock(end_mutex_);
      while (running_ != 0) {
        lock.unlock();
        kick_all();
        lock.lock();
        end_condition_.wait_for(lock, std::chrono::milliseconds(20),
                                [this] { return running_ == 0; });
      }
    }
    std::lock_guard lock(threads_mutex_);
    for (auto& thread : threads_) {
      thread.join();
    }
    threads_.clear();
  }

  void log(std::string_view line) const {
    if (config_.log) {
      config_.log(line);
    } else {
      std::fprintf(stderr, "compactor-vmm: %.*s\n", static_cast<int>(line.size()), line.data());
    }
  }

  // Declared first so that it is destroyed last, after every descriptor of the VM is closed.
  std::optional<deferred_teardown> teardown_keeper_;
  machine_config config_;
  devices_type devices_;
  kvm_system system_;
  vm vm_;
  guest_memory memory_;
  device_context context_;
  std::vector<vcpu> vcpus_;
  std::optional<x86::linux_boot_layout> boot_;

  std::atomic<bool> started_{false};
  std::atomic<bool> ended_{false};
  std::chrono::steady_clock::time_point start_{};
  std::mutex end_mutex_;
  std::condition_variable end_condition_;
  std::optional<run_report> report_;
  unsigned running_ = 0; // vCPU threads still in their loop, under end_mutex_
  std::mutex threads_mutex_;
  std::vector<std::thread> threads_;
};

} // namespace compactor::vmm
