// The guest init's side channel to the VMM (include/compactor/guest/protocol.hpp): an 8-bit
// write to the exit-status port ends the run with that status, and the boot-marker port
// records when the init started.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/guest/protocol.hpp>
#include <compactor/vmm/device.hpp>

namespace compactor::devices {

class exit_device {
public:
  using clock = std::chrono::steady_clock;

  static constexpr std::string_view name = "exit-port";
  static_assert(guest::boot_marker_port == guest::exit_status_port + 1,
                "the exit device serves the two protocol ports as one range");
  static constexpr std::array<vmm::port_range, 1> ports = {
      vmm::port_range{guest::exit_status_port, 2}};

  void attach(vmm::device_context& context, const vmm::device_slot&) { context_ = &context; }

  // Both ports are write-only; a read sees an idle ISA bus.
  void io_in(std::uint16_t, std::span<std::uint8_t> data) {
    for (auto& byte : data) {
      byte = 0xff;
    }
  }

  void io_out(std::uint16_t port, std::span<const std::uint8_t> data) {
    if (data.empty()) {
      return;
    }
    const std::uint8_t value = data[0];
    if (port == guest::exit_status_port) {
      exit_status_ = value;
      if (context_ != nullptr) {
        context_->end_run(vmm::run_outcome::exited, value);
      }
      return;
    }
    if (value == guest::boot_marker_init_reached) {
      if (!init_reached_) {
        init_reached_ = clock::now();
      }
    } else if (context_ != nullptr && !logged_reserved_) {
      logged_reserved_ = true;
      context_->log(fmt::format("exit-port: ignored reserved boot marker {:#04x} on port {:#x}",
                                value, guest::boot_marker_port));
    }
  }

  [[nodiscard]] std::optional<std::uint8_t> exit_status() const noexcept { return exit_status_; }
  [[nodiscard]] std::optional<clock::time_point> init_reached() const noexcept {
    return init_reached_;
  }

private:
  vmm::device_context* context_ = nullptr;
  std::optional<std::uint8_t> exit_status_;
  std::optional<clock::time_point> init_reached_;
  bool logged_reserved_ = false;
};

} // namespace compactor::devices
