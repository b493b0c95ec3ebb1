// A 16550A UART as on a PC's COM port: eight registers at `base`, an interrupt line gated by
// MCR.OUT2, 16-byte FIFOs, loopback. Transmitted bytes leave immediately for the output, so
// the transmitter is always empty (LSR.THRE and LSR.TEMT stay set).
//
// Register names and bits follow the National Semiconductor PC16550D datasheet, tables
// "Register Summary" and sections 8.1-8.7.
#pragma once

#include <array>
#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include <compactor/devices/serial_output.hpp>
#include <compactor/vmm/device.hpp>

namespace compactor::devices {

namespace uart_registers {
// Offsets from the base port. DLAB is LCR bit 7.
inline constexpr std::uint16_t rbr_thr_dll = 0; // RBR (read), THR (write), DLL (DLAB=1)
inline constexpr std::uint16_t ier_dlm = 1;     // IER, DLM (DLAB=1)
inline constexpr std::uint16_t iir_fcr = 2;     // IIR (read), FCR (write)
inline constexpr std::uint16_t lcr = 3;
inline constexpr std::uint16_t mcr = 4;
inline constexpr std::uint16_t lsr = 5;
inline constexpr std::uint16_t msr = 6;
inline constexpr std::uint16_t scr = 7;

inline constexpr std::uint8_t ier_erbfi = 0x01; // received data available
inline constexpr std::uint8_t ier_etbei = 0x02; // transmitter holding register empty
inline constexpr std::uint8_t ier_elsi = 0x04;  // receiver line status
inline constexpr std::uint8_t ier_edssi = 0x08; // modem status

inline constexpr std::uint8_t iir_no_interrupt = 0x01;
inline constexpr std::uint8_t iir_line_status = 0x06;
inline constexpr std::uint8_t iir_received_data = 0x04;
inline constexpr std::uint8_t iir_thr_empty = 0x02;
inline constexpr std::uint8_t iir_modem_status = 0x00;
inline constexpr std::uint8_t iir_fifos_enabled = 0xc0;

inline constexpr std::uint8_t fcr_enable = 0x01;
inline constexpr std::uint8_t fcr_clear_rx = 0x02;
inline constexpr std::uint8_t fcr_clear_tx = 0x04;

inline constexpr std::uint8_t lcr_dlab = 0x80;

inline constexpr std::uint8_t mcr_dtr = 0x01;
inline constexpr std::uint8_t mcr_rts = 0x02;
inline constexpr std::uint8_t mcr_out1 = 0x04;
inline constexpr std::uint8_t mcr_out2 = 0x08;
inline constexpr std::uint8_t mcr_loop = 0x10;

inline constexpr std::uint8_t lsr_dr = 0x01;
inline constexpr std::uint8_t lsr_oe = 0x02;
inline constexpr std::uint8_t lsr_thre = 0x20;
inline constexpr std::uint8_t lsr_temt = 0x40;

inline constexpr std::uint8_t msr_cts = 0x10;
inline constexpr std::uint8_t msr_dsr = 0x20;
inline constexpr std::uint8_t msr_ri = 0x40;
inline constexpr std::uint8_t msr_dcd = 0x80;
inline constexpr std::uint8_t msr_delta_mask = 0x0f;
} // namespace uart_registers

template <serial_output Output, std::uint16_t Base = 0x3f8, std::uint32_t Irq = 4>
class uart_16550 {
public:
  static constexpr std::string_view name = "uart-16550a";
  static constexpr std::array<vmm::port_range, 1> ports = {vmm::port_range{Base, 8}};
  static constexpr std::uint32_t irq = Irq;
  static constexpr std::size_t fifo_size = 16;

  explicit uart_16550(Output output) : output_(std::move(output)) {}

  void attach(vmm::device_context& context, const vmm::device_slot&) { context_ = &context; }

  [[nodiscard]] std::string cmdline_fragment(const vmm::device_slot&) const {
    constexpr std::array<std::uint16_t, 4> com_ports = {0x3f8, 0x2f8, 0x3e8, 0x2e8};
    for (std::size_t index = 0; index < com_ports.size(); ++index) {
      if (com_ports[index] == Base) {
        return fmt::format("console=ttyS{}", index);
      }
    }
    return {};
  }

  void flush() {
    if constexpr (requires { output_.flush(); }) {
      output_.flush();
    }
  }

  [[nodiscard]] Output& output() noexcept { return output_; }

  // Bytes arriving from the host side of the line (a terminal's keystrokes). Returns how many
  // fit in the receive FIFO; the rest are the caller's to retry.
  std::size_t receive(std::span<const std::uint8_t> bytes) {
    std::size_t accepted = 0;
    for (const auto byte : bytes) {
      if (rx_.size() >= rx_capacity()) {
        break;
      }
      rx_.push_back(byte);
      ++accepted;
    }
    update_interrupt();
    return accepted;
  }

  void io_in(std::uint16_t port, std::span<std::uint8_t> data) {
    for (auto& byte : data) {
      byte = 0xff;
    }
    if (!data.empty()) {
      data[0] = read_register(static_cast<std::uint16_t>(port - Base));
    }
  }

  void io_out(std::uint16_t port, std::span<const std::uint8_t> data) {
    if (!data.empty()) {
      write_register(static_cast<std::uint16_t>(port - Base), data[0]);
    }
  }

  // Reads one register (offset 0-7), with its side effects.
  std::uint8_t read_register(std::uint16_t offset) {
    using namespace uart_registers;
    const bool dlab = (lcr_ & lcr_dlab) != 0;
    switch (offset) {
    case rbr_thr_dll: {
      if (dlab) {
        return static_cast<std::uint8_t>(divisor_ & 0xff);
      }
      std::uint8_t value = 0;
      if (!rx_.empty()) {
        value = rx_.front();
        rx_.pop_front();
      }
      update_interrupt();
      return value;
    }
    case ier_dlm:
      return dlab ? static_cast<std::uint8_t>(divisor_ >> 8) : ier_;
    case iir_fcr: {
      const std::uint8_t id = interrupt_identification();
      // 8.6: reading IIR when it reports THRE clears that interrupt.
      if (id == iir_thr_empty) {
        thre_pending_ = false;
        update_interrupt();
      }
      return static_cast<std::uint8_t>(id | (fifos_enabled_ ? iir_fifos_enabled : 0));
    }
    case lcr:
      return lcr_;
    case mcr:
      return mcr_;
    case lsr: {
      std::uint8_t value = lsr_thre | lsr_temt;
      if (!rx_.empty()) {
        value |= lsr_dr;
      }
      if (overrun_) {
        value |= lsr_oe;
      }
      overrun_ = false;
      update_interrupt();
      return value;
    }
    case msr: {
      const std::uint8_t value = static_cast<std::uint8_t>(modem_status() | msr_delta_);
      msr_delta_ = 0;
      update_interrupt();
      return value;
    }
    case scr:
      return scr_;
    default:
      return 0xff;
    }
  }

  void write_register(std::uint16_t offset, std::uint8_t value) {
    using namespace uart_registers;
    const bool dlab = (lcr_ & lcr_dlab) != 0;
    switch (offset) {
    case rbr_thr_dll:
      if (dlab) {
        divisor_ = static_cast<std::uint16_t>((divisor_ & 0xff00) | value);
      } else {
        transmit(value);
      }
      break;
    case ier_dlm:
      if (dlab) {
        divisor_ = static_cast<std::uint16_t>((divisor_ & 0x00ff) | (value << 8));
      } else {
        // 8.5: enabling ETBEI with an empty holding register raises THRE at once.
        if ((value & ier_etbei) != 0 && (ier_ & ier_etbei) == 0) {
          thre_pending_ = true;
        }
        ier_ = value & 0x0f;
      }
      break;
    case iir_fcr:
      fifos_enabled_ = (value & fcr_enable) != 0;
      if ((value & fcr_clear_rx) != 0 || !fifos_enabled_) {
        rx_.clear();
      }
      break;
    case lcr:
      lcr_ = value;
      break;
    case mcr:
      set_mcr(static_cast<std::uint8_t>(value & 0x1f));
      break;
    case lsr:
      break; // 8.4: writing LSR is for factory testing only.
    case msr:
      break;
    case scr:
      scr_ = value;
      break;
    default:
      break;
    }
    update_interrupt();
  }

  // The level the UART drives on its interrupt line (after the OUT2 gate of a PC board).
  [[nodiscard]] bool interrupt_line() const noexcept { return line_; }

  [[nodiscard]] std::uint16_t divisor() const noexcept { return divisor_; }

private:
  [[nodiscard]] std::size_t rx_capacity() const noexcept { return fifos_enabled_ ? fifo_size : 1; }

  void transmit(std::uint8_t value) {
    if ((mcr_ & uart_registers::mcr_loop) != 0) {
      if (rx_.size() >= rx_capacity()) {
        overrun_ = true;
      } else {
        rx_.push_back(value);
      }
    } else {
      output_.write(std::span<const std::uint8_t>(&value, 1));
    }
    // The byte leaves at once, so the holding register is empty again.
    thre_pending_ = true;
  }

  // MSR bits 4-7. In loopback (8.6 MCR bit 4) they follow the modem-control outputs;
  // otherwise the line is connected: CTS, DSR and DCD are asserted.
  [[nodiscard]] std::uint8_t modem_status() const noexcept {
    using namespace uart_registers;
    if ((mcr_ & mcr_loop) == 0) {
      return msr_cts | msr_dsr | msr_dcd;
    }
    std::uint8_t value = 0;
    value |= (mcr_ & mcr_rts) != 0 ? msr_cts : 0;
    value |= (mcr_ & mcr_dtr) != 0 ? msr_dsr : 0;
    value |= (mcr_ & mcr_out1) != 0 ? msr_ri : 0;
    value |= (mcr_ & mcr_out2) != 0 ? msr_dcd : 0;
    return value;
  }

  void set_mcr(std::uint8_t value) {
    using namespace uart_registers;
    const std::uint8_t before = modem_status();
    mcr_ = value;
    const std::uint8_t after = modem_status();
    const std::uint8_t changed = before ^ after;
    // Delta bits: DCTS, DDSR, DDCD on any change; TERI when RI goes from on to off.
    msr_delta_ |= (changed & msr_cts) != 0 ? 0x01 : 0;
    msr_delta_ |= (changed & msr_dsr) != 0 ? 0x02 : 0;
    msr_delta_ |= ((before & msr_ri) != 0 && (after & msr_ri) == 0) ? 0x04 : 0;
    msr_delta_ |= (changed & msr_dcd) != 0 ? 0x08 : 0;
  }

  // The highest-priority pending interrupt that IER enables (datasheet table 4).
  [[nodiscard]] std::uint8_t interrupt_identification() const noexcept {
    using namespace uart_registers;
    if ((ier_ & ier_elsi) != 0 && overrun_) {
      return iir_line_status;
    }
    if ((ier_ & ier_erbfi) != 0 && !rx_.empty()) {
      return iir_received_data;
    }
    if ((ier_ & ier_etbei) != 0 && thre_pending_) {
      return iir_thr_empty;
    }
    if ((ier_ & ier_edssi) != 0 && (msr_delta_ & msr_delta_mask) != 0) {
      return iir_modem_status;
    }
    return iir_no_interrupt;
  }

  void update_interrupt() {
    using namespace uart_registers;
    // On a PC the UART's INTRPT pin reaches the PIC through a gate driven by OUT2; in
    // loopback the outputs are disconnected from the pins.
    const bool gated = (mcr_ & mcr_out2) != 0 && (mcr_ & mcr_loop) == 0;
    const bool level = gated && interrupt_identification() != iir_no_interrupt;
    if (level != line_) {
      line_ = level;
      if (context_ != nullptr) {
        context_->set_irq_line(Irq, level);
      }
    }
  }

  Output output_;
  vmm::device_context* context_ = nullptr;
  std::deque<std::uint8_t> rx_;
  std::uint16_t divisor_ = 12; // 9600 baud from the 1.8432 MHz clock
  std::uint8_t ier_ = 0;
  std::uint8_t lcr_ = 0x03;     // 8 data bits, 1 stop bit, no parity
  std::uint8_t mcr_ = 0;
  std::uint8_t scr_ = 0;
  std::uint8_t msr_delta_ = 0;
  bool fifos_enabled_ = false;
  bool thre_pending_ = false;
  bool overrun_ = false;
  bool line_ = false;
};

} // namespace compactor::devices
