// How a run of the machine ended.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace compactor::vmm {

enum class run_outcome {
  exited,         // the guest wrote its workload's status to the exit port
  reset,          // the guest asked for a reset (i8042 pulse, reboot=k) or KVM reported one
  shutdown,       // the vCPU shut down: a triple fault, or a system-event shutdown
  internal_error, // KVM could not run the guest (KVM_EXIT_INTERNAL_ERROR, emulation failure)
  failed_entry,   // the hardware refused to enter the guest (KVM_EXIT_FAIL_ENTRY)
  unhandled_exit, // an exit reason this VMM does not handle
  timed_out,      // the run limit passed before the guest ended
  stopped,        // the host asked the machine to stop
  host_error,     // the VMM itself failed (an ioctl, a device's host side)
};

[[nodiscard]] constexpr std::string_view to_string(run_outcome outcome) noexcept {
  switch (outcome) {
  case run_outcome::exited: return "exited";
  case run_outcome::reset: return "reset";
  case run_outcome::shutdown: return "shutdown";
  case run_outcome::internal_error: return "internal-error";
  case run_outcome::failed_entry: return "failed-entry";
  case run_outcome::unhandled_exit: return "unhandled-exit";
  case run_outcome::timed_out: return "timed-out";
  case run_outcome::stopped: return "stopped";
  case run_outcome::host_error: return "host-error";
  }
  return "unknown";
}

// The process exit status after a VMM thread made a system call its seccomp filter forbids
// (vmm/seccomp.hpp). The process ends at once, from the SIGSYS handler, without a run_report:
// the thread that made the call may have been taken over by the guest, so nothing it would do
// next is trusted. Next to the statuses of process_exit_status() below.
inline constexpr int forbidden_system_call_exit_status = 207;

// What ended the run, with the guest's status when it exited and one line of detail otherwise.
struct run_report {
  run_outcome outcome = run_outcome::stopped;
  std::optional<std::uint8_t> exit_status; // set when outcome == exited
  std::string detail;                      // e.g. "vCPU 0: triple fault at rip 0x100042"
  std::chrono::nanoseconds duration{};     // from the first vCPU entry to the end

  // One line for the user.
  [[nodiscard]] std::string summary() const {
    std::string line = fmt::format("guest {}", to_string(outcome));
    if (exit_status) {
      line += fmt::format(" with status {}", *exit_status);
    }
    if (!detail.empty()) {
      line += ": " + detail;
    }
    return line;
  }

  // A process exit status in the style of `docker run`: the workload's status when it
  // exited, 0 after a guest-requested reset (a clean reboot=k power-off), and distinct codes
  // above 128+64 for the ways a VM can fail, so scripts can tell them apart (and 207,
  // forbidden_system_call_exit_status, when a seccomp filter ended the process).
  [[nodiscard]] int process_exit_status() const noexcept {
    switch (outcome) {
    case run_outcome::exited: return exit_status.value_or(0);
    case run_outcome::reset: return 0;
    case run_outcome::shutdown: return 200;
    case run_outcome::internal_error: return 201;
    case run_outcome::failed_entry: return 202;
    case run_outcome::unhandled_exit: return 203;
    case run_outcome::timed_out: return 204;
    case run_outcome::stopped: return 205;
    case run_outcome::host_error: return 206;
    }
    return 206;
  }
};

} // namespace compactor::vmm
