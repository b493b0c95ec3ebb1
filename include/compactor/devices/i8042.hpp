// The PC keyboard controller (Intel 8042), only as far as Linux needs it to probe the
// controller and to reboot: `reboot=k` pulses the CPU reset line with command 0xFE on port
// 0x64, which ends the run with run_outcome::reset. No keyboard or mouse is attached.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/vmm/device.hpp>

namespace compactor::devices {

namespace i8042_registers {
inline constexpr std::uint16_t data_port = 0x60;
inline constexpr std::uint16_t command_port = 0x64; // status on read

inline constexpr std::uint8_t status_output_full = 0x01;
inline constexpr std::uint8_t status_system_flag = 0x04;
inline constexpr std::uint8_t status_command = 0x08; // last write went to the command port

inline constexpr std::uint8_t command_read_ctr = 0x20;
inline constexpr std::uint8_t command_write_ctr = 0x60;
inline constexpr std::uint8_t command_disable_aux = 0xa7;
inline constexpr std::uint8_t command_enable_aux = 0xa8;
inline constexpr std::uint8_t command_test_aux = 0xa9;
inline constexpr std::uint8_t command_self_test = 0xaa;
inline constexpr std::uint8_t command_test_keyboard = 0xab;
inline constexpr std::uint8_t command_disable_keyboard = 0xad;
inline constexpr std::uint8_t command_enable_keyboard = 0xae;
inline constexpr std::uint8_t command_read_output_port = 0xd0;
inline constexpr std::uint8_t command_write_output_port = 0xd1;
inline constexpr std::uint8_t command_pulse_first = 0xf0; // 0xf0-0xff pulse output lines

inline constexpr std::uint8_t self_test_passed = 0x55;
inline constexpr std::uint8_t ctr_keyboard_disabled = 0x10;
inline constexpr std::uint8_t output_port_reset_line = 0x01; // active low
} // namespace i8042_registers

class i8042 {
public:
  static constexpr std::string_view name = "i8042";
  // Two single ports: 0x61 between them belongs to the in-kernel PIT (speaker control).
  static constexpr std::array<vmm::port_range, 2> ports = {
      vmm::port_range{i8042_registers::data_port, 1},
      vmm::port_range{i8042_registers::command_port, 1}};

  void attach(vmm::device_context& context, const vmm::device_slot&) { context_ = &context; }

  // Linux must not wait for a keyboard or mouse that is not there, and must reboot through
  // this controller.
  [[nodiscard]] std::string cmdline_fragment(const vmm::device_slot&) const {
    return "reboot=k i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
  }

  void io_in(std::uint16_t port, std::span<std::uint8_t> data) {
    for (auto& byte : data) {
      byte = 0xff;
    }
    if (data.empty()) {
      return;
    }
    if (port == i8042_registers::command_port) {
      data[0] = status();
    } else {
      data[0] = output_.value_or(0);
      output_.reset();
    }
  }

  void io_out(std::uint16_t port, std::span<const std::uint8_t> data) {
    if (data.empty()) {
      return;
    }
    if (port == i8042_registers::command_port) {
      last_write_was_command_ = true;
      command(data[0]);
    } else {
      last_write_was_command_ = false;
      write_data(data[0]);
    }
  }

  [[nodiscard]] std::uint8_t status() const noexcept {
    using namespace i8042_registers;
    std::uint8_t value = status_system_flag;
    value |= output_ ? status_output_full : 0;
    value |= last_write_was_command_ ? status_command : 0;
    return value;
  }

  [[nodiscard]] std::uint8_t controller_configuration() const noexcept { return ctr_; }
  [[nodiscard]] bool reset_requested() const noexcept { return reset_requested_; }

private:
  void command(std::uint8_t value) {
    using namespace i8042_registers;
    pending_write_.reset();
    switch (value) {
    case command_read_ctr:
      output_ = ctr_;
      return;
    case command_write_ctr:
    case command_write_output_port:
      pending_write_ = value;
      return;
    case command_self_test:
      output_ = self_test_passed;
      return;
    case command_test_keyboard:
      output_ = 0x00; // no error on the keyboard interface
      return;
    case command_test_aux:
      output_ = 0x01; // "clock line stuck low": there is no auxiliary port
      return;
    case command_disable_keyboard:
      ctr_ |= ctr_keyboard_disabled;
      return;
    case command_enable_keyboard:
      ctr_ &= static_cast<std::uint8_t>(~ctr_keyboard_disabled);
      return;
    case command_disable_aux:
    case command_enable_aux:
      return;
    case command_read_output_port:
      output_ = output_port_;
      return;
    default:
      break;
    }
    // Commands 0xF0-0xFF pulse the output lines whose bits are 0 in the low nibble; bit 0 is
    // the CPU reset line.
    if (value >= command_pulse_first) {
      if ((value & output_port_reset_line) == 0) {
        request_reset(fmt::format("i8042 command {:#04x} pulsed the CPU reset line", value));
      }
      return;
    }
    log_once(fmt::format("i8042: ignored unknown command {:#04x} on port 0x64", value));
  }

  void write_data(std::uint8_t value) {
    using namespace i8042_registers;
    if (!pending_write_) {
      log_once(fmt::format("i8042: ignored byte {:#04x} for the keyboard on port 0x60 (no "
                           "keyboard attached)",
                           value));
      return;
    }
    const auto command_byte = *pending_write_;
    pending_write_.reset();
    if (command_byte == command_write_ctr) {
      ctr_ = value;
    } else {
      output_port_ = value;
      if ((value & output_port_reset_line) == 0) {
        request_reset("i8042 output port write cleared the CPU reset line");
      }
    }
  }

  void request_reset(std::string detail) {
    reset_requested_ = true;
    if (context_ != nullptr) {
      context_->end_run(vmm::run_outcome::reset, std::nullopt, std::move(detail));
    }
  }

  void log_once(const std::string& line) {
    if (logged_ || context_ == nullptr) {
      return;
    }
    logged_ = true;
    context_->log(line);
  }

  vmm::device_context* context_ = nullptr;
  std::optional<std::uint8_t> output_;
  std::optional<std::uint8_t> pending_write_;
  std::uint8_t ctr_ = 0x01 | 0x04 | 0x20 | 0x40; // keyboard IRQ, system flag, aux off, XLAT
  std::uint8_t output_port_ = 0x01;
  bool last_write_was_command_ = false;
  bool reset_requested_ = false;
  bool logged_ = false;
};

} // namespace compactor::devices
