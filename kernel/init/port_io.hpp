// The init's side of the port-I/O protocol (include/compactor/guest/protocol.hpp).
#pragma once

#include <sys/io.h>

#include <cstdint>

#include <compactor/guest/protocol.hpp>

namespace compactor::init {

class port_io {
public:
  // Asks the kernel for access to the two protocol ports; the init runs as root, so this only
  // fails on a kernel without I/O port permissions, where the console line is all that remains.
  port_io() noexcept
      : usable_(::ioperm(guest::exit_status_port, 2, 1) == 0 &&
                guest::boot_marker_port == guest::exit_status_port + 1) {}

  [[nodiscard]] bool usable() const noexcept { return usable_; }

  void mark_init_reached() const noexcept {
    if (usable_) {
      ::outb(guest::boot_marker_init_reached, guest::boot_marker_port);
    }
  }

  // Under the project's VMM and under QEMU's isa-debug-exit this ends the machine at once.
  void report_exit_status(std::uint8_t status) const noexcept {
    if (usable_) {
      ::outb(status, guest::exit_status_port);
    }
  }

private:
  bool usable_;
};

} // namespace compactor::init
