// QEMU as the hypervisor: `qemu-system-x86_64 -M microvm` boots the same kernel, initramfs
// and devices as our VMM. It is the reference our VMM is compared with, and what
// `compactor run` uses where KVM cannot boot Linux guests (TCG then emulates the CPU).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <compactor/guest/protocol.hpp>
#include <compactor/host/virtualization.hpp>
#include <compactor/hypervisors/console_status_filter.hpp>
#include <compactor/hypervisors/guest_spec.hpp>
#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

extern char** environ;

namespace compactor::hypervisors {

struct qemu_options {
  std::string program = "qemu-system-x86_64";
  // KVM when the host can boot Linux guests under it, TCG otherwise.
  std::optional<bool> use_kvm;
  // Where the guest console goes; the init's status line is taken out of it.
  int console_fd = STDOUT_FILENO;
};

struct run_result {
  // The workload's status as the init reported it; empty when the guest ended without a
  // report (a kernel panic, a crash of QEMU), which `failure` then describes.
  std::optional<int> status;
  std::string failure;
};

// The kernel command line that the host adds in front of the guest's own parameters.
inline std::string qemu_kernel_cmdline(const guest_spec& spec) {
  return fmt::format("console=ttyS0 reboot=t panic=-1 quiet {}", spec.guest_parameters);
}

inline std::vector<std::string> qemu_arguments(const guest_spec& spec, bool use_kvm,
                                               const std::string& program) {
  std::vector<std::string> arguments = {
      program,
      // acpi=off: only then does QEMU declare its virtio-mmio devices on the kernel command
      // line, which is how a kernel without ACPI (ours) finds them.
      "-M", "microvm,acpi=off,pit=on,pic=on,rtc=on",
      "-accel", use_kvm ? "kvm" : "tcg",
      "-cpu", use_kvm ? "host" : "max",
      "-m", std::to_string(spec.memory_mib),
      "-smp", std::to_string(spec.vcpus),
      "-nodefaults", "-no-user-config", "-nographic", "-no-reboot",
      "-serial", "stdio",
      "-kernel", spec.kernel.string(),
      "-initrd", spec.initrd.string(),
      "-append", qemu_kernel_cmdline(spec),
      // The init reports the workload's status here (guest/protocol.hpp).
      "-device", fmt::format("isa-debug-exit,iobase={:#x},iosize=1", guest::exit_status_port),
  };
  for (std::size_t n = 0; n < spec.disks.size(); ++n) {
    const auto& disk = spec.disks[n];
    arguments.push_back("-drive");
    arguments.push_back(fmt::format("id=disk{},file={},format=raw,if=none{}", n,
                                    disk.path.string(), disk.read_only ? ",readonly=on" : ""));
    arguments.push_back("-device");
    arguments.push_back(fmt::format("virtio-blk-device,drive=disk{}", n));
  }
  if (spec.tap) {
    arguments.push_back("-netdev");
    arguments.push_back(fmt::format("tap,id=net0,ifname={},script=no,downscript=no", *spec.tap));
    arguments.push_back("-device");
    arguments.push_back(spec.net_offloads
                            ? "virtio-net-device,netdev=net0"
                            : "virtio-net-device,netdev=net0,csum=off,guest_csum=off,"
                              "host_tso4=off,host_tso6=off,guest_tso4=off,guest_tso6=off");
  }
  return arguments;
}

// Decodes QEMU's exit code: isa-debug-exit makes it (status << 1) | 1, which keeps the low
// seven bits of the status; 0 means QEMU ended for another reason (the guest powered off
// without writing the port).
inline std::optional<int> status_from_qemu_exit_code(int code) {
  if (code % 2 == 1) {
    return (code >> 1) & 0x7f;
  }
  return std::nullopt;
}

class qemu_runner {
public:
  explicit qemu_runner(qemu_options options = {}) : options_(std::move(options)) {}

  // Boots the guest and waits for it to end.
  run_result run(const guest_spec& spec) {
    const bool use_kvm = options_.use_kvm.value_or(host::probe_virtualization().can_boot_linux());
    const auto arguments = qemu_arguments(spec, use_kvm, options_.program);

    int console[2];
    check_syscall(::pipe2(console, O_CLOEXEC), "pipe2");
    unique_fd console_read(console[0]);
    unique_fd console_write(console[1]);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    if (!spec.interactive) {
      posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
    }
    posix_spawn_file_actions_adddup2(&actions, console_write.get(), STDOUT_FILENO);

    std::vector<char*> argv;
    for (const auto& argument : arguments) {
      argv.push_back(const_cast<char*>(argument.c_str()));
    }
    argv.push_back(nullptr);

    // QEMU starts with no signal blocked and default handlers, whatever this process set up
    // for itself (a caller may block SIGTERM to handle it on a thread of its own).
    posix_spawnattr_t attributes;
    posix_spawnattr_init(&attributes);
    sigset_t none;
    sigemptyset(&none);
    sigset_t defaults;
    sigemptyset(&defaults);
    for (const int signal : {SIGINT, SIGTERM, SIGHUP, SIGPIPE}) {
      sigaddset(&defaults, signal);
    }
    posix_spawnattr_setsigmask(&attributes, &none);
    posix_spawnattr_setsigdefault(&attributes, &defaults);
    posix_spawnattr_setflags(&attributes, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    pid_t pid = 0;
    const int spawned =
        ::posix_spawnp(&pid, argv[0], &actions, &attributes, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attributes);
    if (spawned != 0) {
      throw_errno(spawned, "start " + options_.program);
    }
    child_ = pid;
    console_write.reset();

    console_status_filter filter(::isatty(options_.console_fd) == 0);
    forward_console(console_read.get(), filter);

    int wait_status = 0;
    while (::waitpid(pid, &wait_status, 0) < 0 && errno == EINTR) {
    }
    child_ = -1;

    run_result result;
    result.status = filter.status();
    if (WIFSIGNALED(wait_status)) {
      result.failure = fmt::format("{} was killed by signal {}", options_.program,
                                   WTERMSIG(wait_status));
      return result;
    }
    const int code = WEXITSTATUS(wait_status);
    if (!result.status) {
      result.status = status_from_qemu_exit_code(code);
      if (!result.status) {
        result.failure = fmt::format("the guest ended without reporting a status ({} exited "
                                     "with {})",
                                     options_.program, code);
      }
    }
    return result;
  }

  // Asks a running QEMU to stop (from a signal handler's thread or another thread).
  void stop() const {
    if (const pid_t pid = child_; pid > 0) {
      ::kill(pid, SIGTERM);
    }
  }

private:
  void forward_console(int fd, console_status_filter& filter) const {
    char buffer[4096];
    for (;;) {
      const ssize_t size = ::read(fd, buffer, sizeof buffer);
      if (size < 0 && errno == EINTR) {
        continue;
      }
      if (size <= 0) {
        break;
      }
      write_all(filter.feed({buffer, static_cast<std::size_t>(size)}));
    }
    write_all(filter.finish());
  }

  void write_all(const std::string& text) const {
    std::size_t written = 0;
    while (written < text.size()) {
      const ssize_t size = ::write(options_.console_fd, text.data() + written,
                                   text.size() - written);
      if (size < 0 && errno == EINTR) {
        continue;
      }
      if (size <= 0) {
        return; // a closed console must not stop the guest
      }
      written += static_cast<std::size_t>(size);
    }
  }

  qemu_options options_;
  volatile pid_t child_ = -1;
};

} // namespace compactor::hypervisors
