// Seccomp filters for the VMM's threads (seccomp(2), built with libseccomp).
//
// Every thread that handles what a guest sends loads a filter into itself when it starts,
// before it touches guest data: each vCPU thread (machine.hpp), the virtio event-loop threads
// (support/event_loop.hpp), the console input thread (hypervisors/kvm.hpp) and the serial
// output thread (devices/serial_output.hpp). A filter allows the system calls its thread makes
// and nothing else: ioctl only with the request numbers that thread uses, mmap and mprotect
// never with PROT_EXEC, tgkill only inside this process. A forbidden call raises SIGSYS, whose
// handler writes one line to stderr and ends the process with
// forbidden_system_call_exit_status (run_outcome.hpp). That handler is the process's: it
// replaces any SIGSYS handler of the program's own. A thread cannot remove its filter, and
// threads it starts inherit it.
//
// Filters are per thread (no SECCOMP_FILTER_FLAG_TSYNC), as in Firecracker, so the threads of
// a program that uses the library stay as they are. The thread that builds the machine is not
// filtered: it opens /dev/kvm, the kernel, the disks and the tap, creates the VM and starts the
// other threads, then waits for the end of the run and reads the report. It serves no device
// access, virtqueue or console byte, so a guest never drives it; and it is the caller's own
// thread, which a library must not restrict for the rest of the program.
//
// machine_config::seccomp (and kvm_options::seccomp) turns the filters off. A thread started
// by the library follows the setting of the thread that constructs its owner, at that moment
// (filter_new_threads(), changed for a scope by filter_scope): the machine sets it while it
// attaches its devices and the KVM runner while it builds its machine, so their event loops
// and serial output follow the machine's setting. An fd_output made elsewhere is filtered.
#pragma once

#include <linux/kvm.h>
#include <linux/if_tun.h>
#include <seccomp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <array>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <future>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/vmm/run_outcome.hpp>

namespace compactor::vmm::seccomp {

// What a filtered thread does, which decides what its filter allows.
enum class thread_role {
  vcpu,           // KVM_RUN and the exits it serves: every device's register accesses
  device_events,  // an event loop: virtio queue notifications, tap input, disk and tap I/O
  console_input,  // host stdin to the guest's UART
  console_output, // the guest's UART output to a host descriptor
};

[[nodiscard]] constexpr std::string_view to_string(thread_role role) noexcept {
  switch (role) {
  case thread_role::vcpu: return "vCPU";
  case thread_role::device_events: return "device event loop";
  case thread_role::console_input: return "console input";
  case thread_role::console_output: return "console output";
  }
  return "unknown";
}

namespace detail {

inline thread_local bool filter_new_threads = true;

// For the SIGSYS handler: the role of the calling thread's filter.
inline thread_local thread_role loaded_role = thread_role::vcpu;

// System call names, resolved before any filter exists so that the SIGSYS handler can name the
// call without allocating. Names longer than an entry (none on x86-64) are cut.
inline constexpr int named_syscalls = 512;
using name_entry = std::array<char, 32>;
inline std::array<name_entry, named_syscalls> syscall_names{};
inline std::uint32_t native_arch = 0;

inline void resolve_syscall_names() {
  native_arch = ::seccomp_arch_native();
  for (int number = 0; number < named_syscalls; ++number) {
    char* name = ::seccomp_syscall_resolve_num_arch(native_arch, number);
    if (name != nullptr) {
      std::strncpy(syscall_names[number].data(), name, syscall_names[number].size() - 1);
      std::free(name);
    }
  }
}

// A line built in a fixed buffer with async-signal-safe operations only.
class signal_line {
public:
  void append(std::string_view text) noexcept {
    for (const char c : text) {
      if (size_ < buffer_.size()) {
        buffer_[size_++] = c;
      }
    }
  }
  void append_number(long value) noexcept {
    char digits[24];
    int count = 0;
    unsigned long magnitude = value < 0 ? 0UL - static_cast<unsigned long>(value)
                                        : static_cast<unsigned long>(value);
    do {
      digits[count++] = static_cast<char>('0' + magnitude % 10);
      magnitude /= 10;
    } while (magnitude != 0);
    if (value < 0) {
      append("-");
    }
    while (count > 0) {
      append(std::string_view(&digits[--count], 1));
    }
  }
  void write(int fd) const noexcept {
    std::size_t written = 0;
    while (written < size_) {
      const ssize_t result = ::write(fd, buffer_.data() + written, size_ - written);
      if (result <= 0) {
        return;
      }
      written += static_cast<std::size_t>(result);
    }
  }

private:
  std::array<char, 256> buffer_{};
  std::size_t size_ = 0;
};

inline void on_forbidden_call(int, siginfo_t* info, void*) {
  signal_line line;
  line.append("compactor: a VMM thread (");
  line.append(to_string(loaded_role));
  line.append(") made system call ");
  line.append_number(info->si_syscall);
  const bool native = info->si_arch == native_arch;
  if (native && info->si_syscall >= 0 && info->si_syscall < named_syscalls &&
      syscall_names[info->si_syscall][0] != '\0') {
    line.append(" (");
    line.append(syscall_names[info->si_syscall].data());
    line.append(")");
  } else if (!native) {
    line.append(" of a foreign ABI");
  }
  line.append(", which its seccomp filter forbids\n");
  line.write(STDERR_FILENO);
  ::_exit(forbidden_system_call_exit_status);
}

// Once per process: the SIGSYS handler replaces any other, since a filtered thread must never
// go on after a forbidden call.
inline void install_sigsys_handler() {
  static std::once_flag once;
  std::call_once(once, [] {
    // libseccomp probes the kernel's seccomp features once and caches them in globals: here,
    // before vCPU threads build their filters side by side.
    ::seccomp_api_get();
    resolve_syscall_names();
    struct sigaction action {};
    action.sa_sigaction = on_forbidden_call;
    sigfillset(&action.sa_mask);
    action.sa_flags = SA_SIGINFO;
    if (::sigaction(SIGSYS, &action, nullptr) != 0) {
      throw_errno("sigaction for SIGSYS");
    }
  });
}

// A libseccomp filter under construction; forbidden calls trap (SIGSYS).
class filter {
public:
  filter() : context_(::seccomp_init(SCMP_ACT_TRAP)) {
    if (context_ == nullptr) {
      throw compactor::error("seccomp_init failed");
    }
    // An x32 or i386 system call (int 0x80) is not in the table: trap it too, rather than
    // libseccomp's default of killing the thread silently.
    check(::seccomp_attr_set(context_, SCMP_FLTATR_ACT_BADARCH, SCMP_ACT_TRAP),
          "seccomp_attr_set SCMP_FLTATR_ACT_BADARCH");
  }
  ~filter() { ::seccomp_release(context_); }
  filter(const filter&) = delete;
  filter& operator=(const filter&) = delete;

  void allow(int syscall) {
    check(::seccomp_rule_add_array(context_, SCMP_ACT_ALLOW, syscall, 0, nullptr),
          rule_name(syscall));
  }

  // Allowed when `condition` holds; several conditional rules for one call are alternatives.
  void allow_if(int syscall, scmp_arg_cmp condition) {
    check(::seccomp_rule_add_array(context_, SCMP_ACT_ALLOW, syscall, 1, &condition),
          rule_name(syscall));
  }

  // ioctl with one request number. The kernel reads the request as 32 bits (ioctl(2)), so only
  // those are compared.
  void allow_ioctl(unsigned long request) {
    allow_if(SCMP_SYS(ioctl), scmp_arg_cmp{1, SCMP_CMP_MASKED_EQ, 0xffffffffULL, request});
  }

  // Loads the filter into the calling thread (and sets its no_new_privs, which a thread
  // without CAP_SYS_ADMIN needs for a filter).
  void load() { check(::seccomp_load(context_), "seccomp_load"); }

private:
  static std::string rule_name(int syscall) {
    return fmt::format("seccomp_rule_add for system call {}", syscall);
  }
  static void check(int result, std::string_view call) {
    if (result < 0) {
      throw_errno(-result, call);
    }
  }

  scmp_filter_ctx context_;
};

// What every filtered thread may do: allocate (glibc's malloc and a thread's exit use mmap,
// munmap, madvise, mprotect, mremap and brk), wait on locks, log a line to stderr, read the
// clock (a system call where the vDSO cannot), sleep and end. sigaltstack changes only the
// calling thread's signal stack; AddressSanitizer's runtime sets one up in every thread and
// queries it before each call that does not return, so a sanitized build needs it.
inline void allow_common(filter& rules) {
  const scmp_arg_cmp not_executable{2, SCMP_CMP_MASKED_EQ, PROT_EXEC, 0};
  rules.allow_if(SCMP_SYS(mmap), not_executable);
  rules.allow_if(SCMP_SYS(mprotect), not_executable);
  for (const int syscall : {SCMP_SYS(munmap), SCMP_SYS(madvise), SCMP_SYS(mremap),
                            SCMP_SYS(brk), SCMP_SYS(futex), SCMP_SYS(write),
                            SCMP_SYS(rt_sigreturn), SCMP_SYS(rt_sigprocmask),
                            SCMP_SYS(sigaltstack),
                            SCMP_SYS(clock_gettime), SCMP_SYS(gettimeofday), SCMP_SYS(time),
                            SCMP_SYS(clock_nanosleep),
                            SCMP_SYS(nanosleep), SCMP_SYS(sched_yield), SCMP_SYS(getpid),
                            SCMP_SYS(gettid), SCMP_SYS(restart_syscall), SCMP_SYS(exit),
                            SCMP_SYS(exit_group)}) {
    rules.allow(syscall);
  }
}

// Ending the run wakes the vCPU threads with a signal (machine::kick_all, pthread_kill), which
// a vCPU, a device or the console's Ctrl-A x may do; only threads of this process.
inline void allow_kicks(filter& rules) {
  rules.allow_if(SCMP_SYS(tgkill),
                 scmp_arg_cmp{0, SCMP_CMP_EQ, static_cast<scmp_datum_t>(::getpid()), 0});
}

// Disk and tap I/O (backends/raw_file.hpp, backends/tap.hpp) and eventfd reads and writes.
inline void allow_device_io(filter& rules) {
  for (const int syscall :
       {SCMP_SYS(read), SCMP_SYS(readv), SCMP_SYS(writev), SCMP_SYS(pread64),
        SCMP_SYS(pwrite64), SCMP_SYS(preadv), SCMP_SYS(pwritev), SCMP_SYS(fsync),
        SCMP_SYS(fdatasync)}) {
    rules.allow(syscall);
  }
  // A virtio-net device tells the tap which offloads the guest accepted (net.hpp activate).
  rules.allow_ioctl(TUNSETOFFLOAD);
  // An interrupt without irqfd (mmio_device.hpp falls back to the device context).
  rules.allow_ioctl(KVM_IRQ_LINE);
}

inline void allow_role(filter& rules, thread_role role) {
  switch (role) {
  case thread_role::vcpu:
    rules.allow_ioctl(KVM_RUN);
    rules.allow_ioctl(KVM_GET_REGS); // the rip in a failure report
    allow_kicks(rules);
    // Devices run on the vCPU thread; so do virtio notifications when KVM has no ioeventfd.
    allow_device_io(rules);
    return;
  case thread_role::device_events:
    rules.allow(SCMP_SYS(epoll_wait));
    rules.allow(SCMP_SYS(epoll_pwait));
    rules.allow(SCMP_SYS(epoll_ctl));
    allow_kicks(rules);
    allow_device_io(rules);
    return;
  case thread_role::console_input:
    rules.allow(SCMP_SYS(read));
    rules.allow(SCMP_SYS(poll));
    rules.allow(SCMP_SYS(ppoll));
    rules.allow_ioctl(KVM_IRQ_LINE); // the UART's receive interrupt
    allow_kicks(rules);
    return;
  case thread_role::console_output:
    // Besides write (in the common set): the writer shares its descriptor with fd_output, and
    // closes it when the fd_output was destroyed first (serial_output.hpp).
    rules.allow(SCMP_SYS(close));
    return;
  }
}

} // namespace detail

// Whether library threads started from the calling thread load their filter (true unless a
// filter_scope says otherwise).
[[nodiscard]] inline bool filter_new_threads() noexcept { return detail::filter_new_threads; }

// Sets filter_new_threads() for the calling thread until the end of the scope.
class filter_scope {
public:
  explicit filter_scope(bool filtered) noexcept
      : previous_(std::exchange(detail::filter_new_threads, filtered)) {}
  ~filter_scope() { detail::filter_new_threads = previous_; }
  filter_scope(const filter_scope&) = delete;
  filter_scope& operator=(const filter_scope&) = delete;

private:
  bool previous_;
};

// Loads the filter for `role` into the calling thread, for the rest of its life. Throws when
// the filter cannot be built or loaded (a kernel without seccomp filters, for one).
inline void install_filter(thread_role role) {
  detail::install_sigsys_handler();
  detail::filter rules;
  detail::allow_common(rules);
  detail::allow_role(rules, role);

  // The kernel would reset a blocked SIGSYS to its default action (a core dump) instead of
  // running the handler.
  sigset_t sigsys;
  sigemptyset(&sigsys);
  sigaddset(&sigsys, SIGSYS);
  if (const int result = ::pthread_sigmask(SIG_UNBLOCK, &sigsys, nullptr); result != 0) {
    throw_errno(result, "pthread_sigmask unblocking SIGSYS");
  }
  detail::loaded_role = role;
  rules.load();
}

// Starts a thread that loads the filter for `role` (when `filtered`) before it runs `body`.
// Returns once the filter is in place; when it cannot be loaded, joins the thread and throws.
template <typename Body>
[[nodiscard]] std::thread start_thread(thread_role role, bool filtered, Body body) {
  if (!filtered) {
    return std::thread(std::move(body));
  }
  std::promise<void> loaded;
  auto result = loaded.get_future();
  // The promise moves into the thread, which may still be inside set_value() when the starter
  // has its answer and returns.
  std::thread thread([role, loaded = std::move(loaded), body = std::move(body)]() mutable {
    try {
      install_filter(role);
    } catch (...) {
      loaded.set_exception(std::current_exception());
      return;
    }
    loaded.set_value();
    body();
  });
  try {
    result.get();
  } catch (...) {
    thread.join();
    throw;
  }
  return thread;
}

} // namespace compactor::vmm::seccomp
