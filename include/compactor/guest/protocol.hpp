// The port-I/O protocol between the guest init and the host.
//
// The init (kernel/init/) writes to these x86 I/O ports; the VMM's exit device decodes them.
// The same guest also runs under QEMU, where `-device isa-debug-exit,iobase=0x501,iosize=1`
// ends QEMU with exit code (status << 1) | 1 on a write to `exit_status_port`. That encoding
// keeps only 7 bits of the status in a process exit code, so the init also prints
// `exit_status_console_prefix` followed by the decimal status as its last console line.
#pragma once

#include <cstdint>

namespace compactor::guest {

// 8-bit write: the workload ended with this status (0-255, as `docker run` reports it:
// the exit code, 128+N for signal N, 126 not executable, 127 not found). Ends the VM.
inline constexpr std::uint16_t exit_status_port = 0x501;

// 8-bit write of `boot_marker_init_reached`: the init has started (boot timing). Other values
// are reserved. Ignored under QEMU, where no device sits on this port.
inline constexpr std::uint16_t boot_marker_port = 0x502;
inline constexpr std::uint8_t boot_marker_init_reached = 1;

// Status the init reports when it fails itself (mount, config, network) before the workload
// runs; `docker run` uses 125 for failures of the tool rather than the workload.
inline constexpr std::uint8_t init_failure_status = 125;

inline constexpr const char* exit_status_console_prefix = "compactor-init: exit status ";

} // namespace compactor::guest
