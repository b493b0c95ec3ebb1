#include <catch2/catch.hpp>

#include <compactor/devices/uart_16550.hpp>

#include "device_harness.hpp"

using namespace compactor;
using namespace compactor::devices::uart_registers;
using uart = devices::uart_16550<devices::string_output>;

namespace {

struct uart_bench {
  testing::device_harness harness;
  devices::string_output output;
  uart device{output};

  uart_bench() { device.attach(harness.context, vmm::device_slot{}); }

  std::uint8_t in(std::uint16_t offset) {
    std::uint8_t value = 0;
    device.io_in(static_cast<std::uint16_t>(0x3f8 + offset), std::span(&value, 1));
    return value;
  }
  void out(std::uint16_t offset, std::uint8_t value) {
    device.io_out(static_cast<std::uint16_t>(0x3f8 + offset), std::span(&value, 1));
  }
};

} // namespace

TEST_CASE("uart: claims COM1's eight ports and IRQ 4, and names ttyS0 as the console",
          "[unit]") {
  STATIC_REQUIRE(uart::ports[0].first == 0x3f8);
  STATIC_REQUIRE(uart::ports[0].count == 8);
  STATIC_REQUIRE(uart::irq == 4);
  STATIC_REQUIRE(vmm::device<uart>);
  CHECK(uart(devices::string_output{}).cmdline_fragment({}) == "console=ttyS0");
  CHECK(devices::uart_16550<devices::string_output, 0x2f8, 3>(devices::string_output{})
            .cmdline_fragment({}) == "console=ttyS1");
}

TEST_CASE("uart: with DLAB set, offsets 0 and 1 are the divisor latch", "[unit]") {
  uart_bench bench;
  bench.out(lcr, lcr_dlab | 0x03);
  bench.out(rbr_thr_dll, 0x34);
  bench.out(ier_dlm, 0x12);
  CHECK(bench.in(rbr_thr_dll) == 0x34);
  CHECK(bench.in(ier_dlm) == 0x12);
  CHECK(bench.device.divisor() == 0x1234);
  CHECK(bench.output.text().empty());

  bench.out(lcr, 0x03);
  bench.out(ier_dlm, 0x0f);
  CHECK(bench.in(ier_dlm) == 0x0f);
  CHECK(bench.device.divisor() == 0x1234);
  CHECK(bench.in(lcr) == 0x03);
}

TEST_CASE("uart: THR bytes reach the output and the transmitter reads as empty", "[unit]") {
  uart_bench bench;
  for (const char c : std::string_view("hello\n")) {
    CHECK((bench.in(lsr) & (lsr_thre | lsr_temt)) == (lsr_thre | lsr_temt));
    bench.out(rbr_thr_dll, static_cast<std::uint8_t>(c));
  }
  CHECK(bench.output.text() == "hello\n");
  CHECK((bench.in(lsr) & lsr_dr) == 0);
}

TEST_CASE("uart: THRE interrupt follows IER, is cleared by reading IIR, gated by OUT2",
          "[unit]") {
  uart_bench bench;
  CHECK(bench.in(iir_fcr) == iir_no_interrupt);

  bench.out(ier_dlm, ier_etbei);
  CHECK(bench.harness.irq_changes.empty()); // OUT2 clear: the line stays low
  bench.out(mcr, mcr_out2);
  REQUIRE(bench.harness.irq_changes.size() == 1);
  CHECK(bench.harness.irq_changes[0] == std::pair<std::uint32_t, bool>{4, true});
  CHECK(bench.device.interrupt_line());

  CHECK(bench.in(iir_fcr) == iir_thr_empty);
  CHECK(bench.in(iir_fcr) == iir_no_interrupt);
  CHECK_FALSE(bench.device.interrupt_line());
  CHECK(bench.harness.irq_changes.back() == std::pair<std::uint32_t, bool>{4, false});

  bench.out(rbr_thr_dll, 'x'); // the byte leaves at once: THRE again
  CHECK(bench.in(iir_fcr) == iir_thr_empty);
  bench.out(ier_dlm, 0);
  CHECK(bench.in(iir_fcr) == iir_no_interrupt);
}

TEST_CASE("uart: received data outranks THRE and is cleared by reading RBR", "[unit]") {
  uart_bench bench;
  bench.out(mcr, mcr_out2);
  bench.out(ier_dlm, ier_erbfi | ier_etbei);
  const std::uint8_t bytes[] = {'a', 'b'};
  CHECK(bench.device.receive(bytes) == 1); // FIFOs off: a one-byte holding register
  CHECK((bench.in(lsr) & lsr_dr) != 0);
  CHECK(bench.in(iir_fcr) == iir_received_data);
  CHECK(bench.in(rbr_thr_dll) == 'a');
  CHECK((bench.in(lsr) & lsr_dr) == 0);
  CHECK(bench.in(iir_fcr) == iir_thr_empty);

  bench.out(iir_fcr, fcr_enable);
  CHECK((bench.in(iir_fcr) & iir_fifos_enabled) == iir_fifos_enabled);
  const std::uint8_t many[20] = {};
  CHECK(bench.device.receive(many) == uart::fifo_size);
  bench.out(iir_fcr, fcr_enable | fcr_clear_rx);
  CHECK((bench.in(lsr) & lsr_dr) == 0);
}

TEST_CASE("uart: loopback mirrors MCR in MSR and THR into RBR, as Linux's probe expects",
          "[unit]") {
  uart_bench bench;
  CHECK((bench.in(msr) & 0xf0) == (msr_cts | msr_dsr | msr_dcd));

  bench.out(mcr, mcr_loop | mcr_out2 | mcr_rts);
  CHECK((bench.in(msr) & 0xf0) == (msr_dcd | msr_cts));
  bench.out(mcr, mcr_loop | mcr_out1 | mcr_dtr);
  const std::uint8_t status = bench.in(msr);
  CHECK((status & 0xf0) == (msr_ri | msr_dsr));
  CHECK((status & 0x0f) != 0); // delta bits record the change...
  CHECK((bench.in(msr) & 0x0f) == 0); // ...until MSR is read

  bench.out(rbr_thr_dll, 'L');
  CHECK(bench.output.text().empty());
  bench.out(rbr_thr_dll, 'M'); // FIFOs off: the second byte overruns
  const std::uint8_t line = bench.in(lsr);
  CHECK((line & lsr_dr) != 0);
  CHECK((line & lsr_oe) != 0);
  CHECK((bench.in(lsr) & lsr_oe) == 0);
  CHECK(bench.in(rbr_thr_dll) == 'L');
  CHECK(bench.harness.irq_changes.empty()); // loopback disconnects the interrupt pin
}

TEST_CASE("uart: scratch register holds a byte; wide reads fill with ones", "[unit]") {
  uart_bench bench;
  bench.out(scr, 0x5a);
  CHECK(bench.in(scr) == 0x5a);
  std::uint8_t wide[2] = {0, 0};
  bench.device.io_in(0x3f8 + scr, wide);
  CHECK(wide[0] == 0x5a);
  CHECK(wide[1] == 0xff);
}
