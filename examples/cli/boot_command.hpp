// `compactor boot KERNEL INITRD`: boots a kernel and an initramfs (one that `compactor export`
// made, or any other) and exits with the workload's status.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <compactor/hypervisors/guest_spec.hpp>
#include <compactor/hypervisors/kvm.hpp>
#include <compactor/hypervisors/qemu.hpp>
#include <compactor/hypervisors/select.hpp>
#include <compactor/initramfs/guest_memory.hpp>

#include "options.hpp"

namespace compactor::commands {

// Options shared by `boot` and `run`: the machine and the hypervisor.
struct machine_options {
  unsigned memory_mib = 512;
  unsigned vcpus = 1;
  std::vector<std::string> disks;
  std::string tap;
  bool no_net_offload = false;
  std::string hypervisor = "auto";
  unsigned timeout_s = 0;
  bool no_seccomp = false;
  bool teardown_in_process = false;

  void add_to(CLI::App& command) {
    command.add_option("--mem-size-mb", memory_mib, "Guest memory in MiB")
        ->check(CLI::Range(16u, 1u << 20));
    command.add_option("--num-vcpus", vcpus, "Guest vCPUs")->check(CLI::Range(1u, 64u));
    command.add_option("--disk", disks, "A raw disk image, PATH[:ro] (virtio-blk; repeatable)")
        ->allow_extra_args(false); // one path per --disk, so positionals after it stay free
    command.add_option("--tap", tap, "A tap interface for the guest's eth0 (virtio-net)");
    command.add_flag("--no-net-offload", no_net_offload,
                     "Offer the guest no checksum or segmentation offloads on eth0");
    command.add_option("--hypervisor", hypervisor,
                       "auto (our VMM where KVM can boot Linux, else QEMU), kvm or qemu");
    command.add_option("--timeout", timeout_s, "Stop the guest after this many seconds");
    command.add_flag("--no-seccomp", no_seccomp,
                     "Run our VMM's threads without their seccomp filters (for debugging)");
    command.add_flag("--teardown-in-process", teardown_in_process,
                     "Tear the VM down in this process before exiting, not in a keeper process");
  }

  // The settings of our VMM that these options carry.
  [[nodiscard]] hypervisors::kvm_options kvm() const {
    hypervisors::kvm_options options;
    if (timeout_s > 0) {
      options.timeout = std::chrono::seconds(timeout_s);
    }
    options.seccomp = !no_seccomp;
    options.deferred_teardown = !teardown_in_process;
    return options;
  }

  void fill(hypervisors::guest_spec& spec) const {
    spec.memory_mib = memory_mib;
    spec.vcpus = vcpus;
    for (const auto& value : disks) {
      spec.disks.push_back(parse_disk(value));
    }
    if (!tap.empty()) {
      spec.tap = tap;
    }
    spec.net_offloads = !no_net_offload;
  }
};

// Boots `spec` with the chosen hypervisor; returns the process exit status.
inline int boot_guest(const hypervisors::guest_spec& spec, const machine_options& machine) {
  const auto chosen =
      hypervisors::choose_hypervisor(hypervisors::parse_hypervisor(machine.hypervisor));
  hypervisors::run_result result;
  if (chosen == hypervisors::hypervisor::kvm) {
    result = hypervisors::kvm_runner(machine.kvm()).run(spec);
  } else {
    result = hypervisors::qemu_runner().run(spec);
  }
  if (!result.status) {
    throw compactor::error(result.failure);
  }
  return *result.status;
}

struct boot_command {
  CLI::App* app = nullptr;
  std::string kernel;
  std::string initrd;
  std::string append;
  machine_options machine;

  [[nodiscard]] bool parsed() const { return app->parsed(); }

  int run() const {
    hypervisors::guest_spec spec;
    spec.kernel = kernel;
    spec.initrd = initrd;
    spec.guest_parameters = append;
    machine.fill(spec);
    // Only what the files themselves show (a plain cpio, or a zstd frame's content size; else
    // the compressed size) is known here, so only guests that cannot hold it are refused.
    initramfs::check_fits_in_guest(initramfs::size_from_file(spec.initrd),
                                   initramfs::kernel_memory_bytes(spec.kernel), spec.memory_mib,
                                   initramfs::root_filesystem_for(spec.guest_parameters));
    return boot_guest(spec, machine);
  }
};

inline void add_boot(CLI::App& app, boot_command& command) {
  command.app = app.add_subcommand("boot", "Boot a kernel and an initramfs as a micro-VM");
  command.app->add_option("kernel", command.kernel, "ELF vmlinux or bzImage")
      ->required()
      ->check(CLI::ExistingFile);
  command.app->add_option("initrd", command.initrd, "The initramfs")
      ->required()
      ->check(CLI::ExistingFile);
  command.app->add_option("--append", command.append,
                          "Kernel command-line entries for the guest (after console=...)");
  command.machine.add_to(*command.app);
}

} // namespace compactor::commands
