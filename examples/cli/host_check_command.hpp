// `compactor host-check`: says whether this machine can run Linux guests under KVM.
#pragma once

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <compactor/host/virtualization.hpp>

namespace compactor::commands {

struct host_check_command {
  CLI::App* app = nullptr;

  CLI::App* operator->() const { return app; }

  // Exit status 0 when Linux guests can boot under KVM here, 1 otherwise.
  int run() const {
    const auto report = host::probe_virtualization();
    fmt::print("/dev/kvm: {}\n", report.kvm.usable ? "usable" : report.kvm.problem);
    fmt::print("hardware virtualization: {}\n", report.cpu.vmx   ? "Intel VT-x (vmx)"
                                                : report.cpu.svm ? "AMD-V (svm)"
                                                                 : "none");
    if (report.can_boot_linux()) {
      fmt::print("Linux guests can boot under KVM here.\n");
      return 0;
    }
    fmt::print("Linux guests cannot boot under KVM here: {}.\n", report.why_linux_cannot_boot());
    return 1;
  }
};

inline host_check_command add_host_check(CLI::App& app) {
  return {app.add_subcommand("host-check",
                             "Tell whether this machine can boot Linux guests under KVM")};
}

} // namespace compactor::commands
