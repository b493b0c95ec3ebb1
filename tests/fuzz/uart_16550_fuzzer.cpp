// libFuzzer target: a hostile driver on the 16550 UART's eight registers, with bytes arriving
// from the host side in between. Each operation is one kind byte and its operands:
//   0: write register (offset, value)     1: read register (offset)
//   2: bytes arrive (count 0-31, bytes)   3: port access of 1, 2 or 4 bytes (offset, value)
// A small model of what the PC16550D datasheet promises (the receive FIFO's bytes and order,
// its 16 or 1 places, overrun, the divisor latch, the registers that read back) runs beside it,
// and every read is checked against it and against invariants that hold in any state:
// LSR.THRE and LSR.TEMT always set (the transmitter sends at once), LSR.DR set exactly when
// the FIFO holds data, IIR a valid identification of the highest-priority enabled interrupt,
// the interrupt line raised only through OUT2 outside loopback.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <deque>
#include <span>
#include <vector>

#include <compactor/devices/uart_16550.hpp>

namespace {

namespace reg = compactor::devices::uart_registers;

// Keeps what the guest transmitted.
struct recording_output {
  std::vector<std::uint8_t>* sent;
  void write(std::span<const std::uint8_t> bytes) {
    sent->insert(sent->end(), bytes.begin(), bytes.end());
  }
};

constexpr std::uint16_t base = 0x3f8;
using uart = compactor::devices::uart_16550<recording_output, base>;

void require(bool holds) {
  if (!holds) {
    std::abort(); // libFuzzer reports the input that broke the invariant
  }
}

// What the datasheet lets a driver know about the UART's state.
struct model {
  std::deque<std::uint8_t> rx;
  bool fifos = false;
  bool overrun = false;
  std::uint8_t ier = 0;
  std::uint8_t lcr = 0x03;
  std::uint8_t mcr = 0;
  std::uint8_t scr = 0;
  std::uint16_t divisor = 12;
  std::size_t sent = 0;

  [[nodiscard]] bool dlab() const { return (lcr & reg::lcr_dlab) != 0; }
  [[nodiscard]] bool loop() const { return (mcr & reg::mcr_loop) != 0; }
  [[nodiscard]] std::size_t capacity() const { return fifos ? uart::fifo_size : 1; }
};

// Lower-priority identifications (THRE, modem status) depend on history the model does not
// keep; the two highest are checked exactly.
void check_iir(std::uint8_t iir, const model& m) {
  const std::uint8_t id = iir & 0x0f;
  require(id == reg::iir_no_interrupt || id == reg::iir_line_status ||
          id == reg::iir_received_data || id == reg::iir_thr_empty ||
          id == reg::iir_modem_status);
  require((iir & 0x30) == 0);
  require((iir & 0xc0) == (m.fifos ? reg::iir_fifos_enabled : 0));
  const bool line_status = (m.ier & reg::ier_elsi) != 0 && m.overrun;
  const bool received = (m.ier & reg::ier_erbfi) != 0 && !m.rx.empty();
  if (line_status) {
    require(id == reg::iir_line_status);
  } else if (received) {
    require(id == reg::iir_received_data);
  } else {
    require(id != reg::iir_line_status && id != reg::iir_received_data);
  }
  if (id == reg::iir_thr_empty) {
    require((m.ier & reg::ier_etbei) != 0);
  }
  if (id == reg::iir_modem_status) {
    require((m.ier & reg::ier_edssi) != 0);
  }
}

void check_read(std::uint16_t offset, std::uint8_t value, model& m) {
  switch (offset) {
  case reg::rbr_thr_dll:
    if (m.dlab()) {
      require(value == (m.divisor & 0xff));
    } else if (m.rx.empty()) {
      require(value == 0);
    } else {
      require(value == m.rx.front());
      m.rx.pop_front();
    }
    break;
  case reg::ier_dlm:
    require(value == (m.dlab() ? (m.divisor >> 8) : m.ier));
    break;
  case reg::iir_fcr:
    check_iir(value, m);
    break;
  case reg::lcr:
    require(value == m.lcr);
    break;
  case reg::mcr:
    require(value == m.mcr);
    break;
  case reg::lsr:
    require((value & (reg::lsr_thre | reg::lsr_temt)) == (reg::lsr_thre | reg::lsr_temt));
    require(((value & reg::lsr_dr) != 0) == !m.rx.empty());
    require(((value & reg::lsr_oe) != 0) == m.overrun);
    require((value & 0x9c) == 0); // no parity, framing, break or FIFO errors on this line
    m.overrun = false;
    break;
  case reg::msr: {
    const std::uint8_t status = value & 0xf0;
    if (m.loop()) {
      // 8.6, MCR bit 4: RTS->CTS, DTR->DSR, OUT1->RI, OUT2->DCD.
      const std::uint8_t expected =
          ((m.mcr & reg::mcr_rts) != 0 ? reg::msr_cts : 0) |
          ((m.mcr & reg::mcr_dtr) != 0 ? reg::msr_dsr : 0) |
          ((m.mcr & reg::mcr_out1) != 0 ? reg::msr_ri : 0) |
          ((m.mcr & reg::mcr_out2) != 0 ? reg::msr_dcd : 0);
      require(status == expected);
    } else {
      require(status == (reg::msr_cts | reg::msr_dsr | reg::msr_dcd));
    }
    break;
  }
  case reg::scr:
    require(value == m.scr);
    break;
  default:
    break;
  }
}

void apply_write(std::uint16_t offset, std::uint8_t value, model& m,
                 const std::vector<std::uint8_t>& sent) {
  switch (offset) {
  case reg::rbr_thr_dll:
    if (m.dlab()) {
      m.divisor = static_cast<std::uint16_t>((m.divisor & 0xff00) | value);
    } else if (m.loop()) {
      if (m.rx.size() >= m.capacity()) {
        m.overrun = true;
      } else {
        m.rx.push_back(value);
      }
    } else {
      ++m.sent;
      require(sent.size() == m.sent && sent.back() == value);
    }
    break;
  case reg::ier_dlm:
    if (m.dlab()) {
      m.divisor = static_cast<std::uint16_t>((m.divisor & 0x00ff) | (value << 8));
    } else {
      m.ier = value & 0x0f;
    }
    break;
  case reg::iir_fcr:
    m.fifos = (value & reg::fcr_enable) != 0;
    if ((value & reg::fcr_clear_rx) != 0 || !m.fifos) {
      m.rx.clear();
    }
    break;
  case reg::lcr:
    m.lcr = value;
    break;
  case reg::mcr:
    m.mcr = value & 0x1f;
    break;
  case reg::scr:
    m.scr = value;
    break;
  default:
    break; // LSR and MSR ignore writes
  }
  require(sent.size() == m.sent); // nothing leaves but THR writes outside loopback
}

// The line follows IIR through the OUT2 gate; in loopback the pin is disconnected.
void check_line(const uart& device, const model& m) {
  const bool gated = (m.mcr & reg::mcr_out2) != 0 && !m.loop();
  if (device.interrupt_line()) {
    require(gated);
  }
  const bool certain = ((m.ier & reg::ier_elsi) != 0 && m.overrun) ||
                       ((m.ier & reg::ier_erbfi) != 0 && !m.rx.empty());
  if (gated && certain) {
    require(device.interrupt_line());
  }
  require(m.rx.size() <= m.capacity());
}

} // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> sent;
  uart device(recording_output{&sent});
  model m;
  std::size_t at = 0;
  const auto next = [&]() -> std::uint8_t { return at < size ? data[at++] : 0; };

  while (at < size) {
    const std::uint8_t kind = next();
    switch (kind % 4) {
    case 0: {
      const auto offset = static_cast<std::uint16_t>(next() % 8);
      const std::uint8_t value = next();
      device.write_register(offset, value);
      apply_write(offset, value, m, sent);
      break;
    }
    case 1: {
      const auto offset = static_cast<std::uint16_t>(next() % 8);
      check_read(offset, device.read_register(offset), m);
      break;
    }
    case 2: {
      std::vector<std::uint8_t> bytes(next() % 32);
      for (auto& byte : bytes) {
        byte = next();
      }
      const auto room = m.capacity() - m.rx.size();
      const auto accepted = device.receive(bytes);
      require(accepted == std::min(bytes.size(), room));
      m.rx.insert(m.rx.end(), bytes.begin(), bytes.begin() + static_cast<long>(accepted));
      break;
    }
    default: {
      // A wider access reads the register in its first byte and all-ones above it, and
      // writes only its first byte, as an 8-bit device on the ISA bus does.
      const auto offset = static_cast<std::uint16_t>(next() % 8);
      const std::size_t width = std::size_t{1} << ((kind >> 2) % 3);
      const std::uint8_t value = next();
      const auto port = static_cast<std::uint16_t>(base + offset);
      if ((kind & 0x80) != 0) {
        std::uint8_t in[4] = {};
        device.io_in(port, std::span(in, width));
        check_read(offset, in[0], m);
        for (std::size_t i = 1; i < width; ++i) {
          require(in[i] == 0xff);
        }
      } else {
        const std::uint8_t out[4] = {value, value, value, value};
        device.io_out(port, std::span(out, width));
        apply_write(offset, value, m, sent);
      }
      break;
    }
    }
    check_line(device, m);
  }
  return 0;
}
