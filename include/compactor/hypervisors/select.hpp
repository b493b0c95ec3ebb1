// Which hypervisor boots the guest: our VMM where KVM can run Linux guests, else QEMU (TCG)
// where it is installed, else nothing, with the reason.
#pragma once

#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/host/programs.hpp>
#include <compactor/host/virtualization.hpp>
#include <compactor/support/error.hpp>

namespace compactor::hypervisors {

enum class hypervisor { automatic, kvm, qemu };

inline hypervisor parse_hypervisor(std::string_view name) {
  if (name == "auto") {
    return hypervisor::automatic;
  }
  if (name == "kvm") {
    return hypervisor::kvm;
  }
  if (name == "qemu") {
    return hypervisor::qemu;
  }
  throw compactor::error(fmt::format("--hypervisor {}: expected auto, kvm or qemu", name));
}

// Resolves `automatic`, and refuses `kvm` up front where a Linux guest could not boot.
inline hypervisor choose_hypervisor(hypervisor wanted,
                                    const host::virtualization_report& host = host::probe_virtualization()) {
  const bool qemu_installed = host::find_program("qemu-system-x86_64").has_value();
  switch (wanted) {
  case hypervisor::kvm:
    if (!host.can_boot_linux()) {
      throw compactor::error(fmt::format("--hypervisor kvm: {}", host.why_linux_cannot_boot()));
    }
    return hypervisor::kvm;
  case hypervisor::qemu:
    if (!qemu_installed) {
      throw compactor::error("--hypervisor qemu: qemu-system-x86_64 is not installed");
    }
    return hypervisor::qemu;
  case hypervisor::automatic:
    if (host.can_boot_linux()) {
      return hypervisor::kvm;
    }
    if (qemu_installed) {
      return hypervisor::qemu;
    }
    throw compactor::error(fmt::format("no hypervisor can boot the guest: {}, and "
                                       "qemu-system-x86_64 is not installed",
                                       host.why_linux_cannot_boot()));
  }
  return hypervisor::qemu;
}

} // namespace compactor::hypervisors
