// What this host can virtualize: whether /dev/kvm is usable, and whether the CPU has hardware
// virtualization (Intel VMX or AMD SVM).
//
// Both matter. On some hosts /dev/kvm is present and the whole KVM API works, but the CPU has
// no vmx/svm and KVM runs guest code through its instruction emulator (a paravirtual KVM such
// as kvm_pvm). Small probe guests run there; a Linux kernel does not, because the emulator
// rejects instructions that every kernel executes early (XSAVE, CLAC/STAC, ...). The program
// uses this report to say so up front instead of starting a guest that would hang.
#pragma once

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/support/unique_fd.hpp>

namespace compactor::host {

// The hardware-virtualization flags of the CPU, as /proc/cpuinfo lists them.
struct cpu_virtualization {
  bool vmx = false; // Intel VT-x
  bool svm = false; // AMD-V

  [[nodiscard]] bool available() const noexcept { return vmx || svm; }
};

// Reads the "flags" lines of a /proc/cpuinfo text. A flag counts only as a whole word.
[[nodiscard]] inline cpu_virtualization parse_cpu_flags(std::string_view cpuinfo) {
  cpu_virtualization result;
  std::istringstream lines{std::string(cpuinfo)};
  for (std::string line; std::getline(lines, line);) {
    if (!line.starts_with("flags")) {
      continue;
    }
    const auto colon = line.find(':');
    if (colon == std::string::npos) {
      continue;
    }
    std::istringstream words(line.substr(colon + 1));
    for (std::string word; words >> word;) {
      result.vmx = result.vmx || word == "vmx";
      result.svm = result.svm || word == "svm";
    }
  }
  return result;
}

[[nodiscard]] inline cpu_virtualization read_cpu_virtualization(
    const std::string& cpuinfo_path = "/proc/cpuinfo") {
  std::ifstream file(cpuinfo_path);
  std::stringstream text;
  text << file.rdbuf();
  return parse_cpu_flags(text.str());
}

// Whether a program can use KVM: the device opens, speaks the stable API (version 12) and
// creates a VM. `problem` says what failed when `usable` is false.
struct kvm_status {
  bool usable = false;
  int api_version = -1;
  std::string problem;
};

[[nodiscard]] inline kvm_status probe_kvm(const std::string& device_path = "/dev/kvm") {
  kvm_status status;
  unique_fd kvm(::open(device_path.c_str(), O_RDWR | O_CLOEXEC));
  if (!kvm) {
    status.problem = fmt::format("cannot open {}: {}", device_path, std::strerror(errno));
    return status;
  }

  status.api_version = ::ioctl(kvm.get(), KVM_GET_API_VERSION, 0);
  if (status.api_version != KVM_API_VERSION) {
    status.problem = fmt::format("{} speaks KVM API version {}, not {}", device_path,
                                 status.api_version, KVM_API_VERSION);
    return status;
  }

  unique_fd vm(::ioctl(kvm.get(), KVM_CREATE_VM, 0));
  if (!vm) {
    status.problem = fmt::format("KVM_CREATE_VM on {} failed: {}", device_path,
                                 std::strerror(errno));
    return status;
  }

  status.usable = true;
  return status;
}

// Everything the program needs to decide how to run a guest.
struct virtualization_report {
  kvm_status kvm;
  cpu_virtualization cpu;

  // KVM with hardware virtualization: a Linux kernel boots under our VMM.
  [[nodiscard]] bool can_boot_linux() const noexcept { return kvm.usable && cpu.available(); }

  // One line for the user saying why a Linux guest cannot run under KVM here, or empty.
  [[nodiscard]] std::string why_linux_cannot_boot() const {
    if (!kvm.usable) {
      return fmt::format("KVM is not usable: {}", kvm.problem);
    }
    if (!cpu.available()) {
      return "the CPU has no hardware virtualization (no vmx or svm flag in /proc/cpuinfo), so "
             "KVM here only emulates guest instructions and a Linux kernel would not boot";
    }
    return {};
  }
};

[[nodiscard]] inline virtualization_report probe_virtualization() {
  return virtualization_report{probe_kvm(), read_cpu_virtualization()};
}

} // namespace compactor::host
