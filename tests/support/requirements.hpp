// What tests need from the machine and from the services the test command starts.
#pragma once

#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <optional>
#include <string>

#include <compactor/host/programs.hpp>
#include <compactor/host/virtualization.hpp>

namespace compactor::testing {

// Each returns why the requirement is not met, or nothing when it is.

inline std::optional<std::string> missing_kvm() {
  const auto kvm = host::probe_kvm();
  if (!kvm.usable) {
    return kvm.problem;
  }
  return std::nullopt;
}

inline std::optional<std::string> missing_hardware_virtualization() {
  const auto report = host::probe_virtualization();
  if (!report.can_boot_linux()) {
    return report.why_linux_cannot_boot();
  }
  return std::nullopt;
}

using host::find_program;

inline std::optional<std::string> missing_qemu() {
  if (!find_program("qemu-system-x86_64")) {
    return "qemu-system-x86_64 is not installed (Debian package qemu-system-x86)";
  }
  return std::nullopt;
}

inline std::optional<std::string> missing_root() {
  if (::geteuid() != 0) {
    return "needs root (network namespaces and tap devices)";
  }
  return std::nullopt;
}

// The value of a variable that the test command (scripts/test.sh) sets when it has started a
// service, or nothing. Tests that need the service fail with `service_missing_message`.
inline std::optional<std::string> service_variable(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') {
    return std::nullopt;
  }
  return std::string(value);
}

inline std::string service_missing_message(const char* service, const char* variable) {
  std::string message = service;
  message += " is not running for the tests: ";
  message += variable;
  message += " is unset. scripts/test.sh starts it; see its output for why it could not.";
  return message;
}

} // namespace compactor::testing
