#include <catch2/catch.hpp>

#include <compactor/devices/cmos_rtc.hpp>

using namespace compactor;
namespace reg = devices::cmos_registers;

namespace {

// 2026-12-03 17:45:09 UTC, a Thursday.
constexpr std::int64_t thursday_evening = 1796319909;

struct rtc_bench {
  std::int64_t host_time = thursday_evening;
  devices::cmos_rtc device{[this] { return host_time; }};

  std::uint8_t read(std::uint8_t index) {
    const std::uint8_t selector = index;
    device.io_out(reg::index_port, std::span(&selector, 1));
    std::uint8_t value = 0;
    device.io_in(reg::data_port, std::span(&value, 1));
    return value;
  }
  void write(std::uint8_t index, std::uint8_t value) {
    device.io_out(reg::index_port, std::span(&index, 1));
    device.io_out(reg::data_port, std::span(&value, 1));
  }
};

} // namespace

TEST_CASE("cmos-rtc: the host's UTC time in BCD and 24-hour mode by default", "[unit]") {
  rtc_bench bench;
  CHECK(bench.read(reg::seconds) == 0x09);
  CHECK(bench.read(reg::minutes) == 0x45);
  CHECK(bench.read(reg::hours) == 0x17);
  CHECK(bench.read(reg::day_of_week) == 0x05); // Sunday is 1
  CHECK(bench.read(reg::day_of_month) == 0x03);
  CHECK(bench.read(reg::month) == 0x12);
  CHECK(bench.read(reg::year) == 0x26);
  CHECK(bench.read(reg::century) == 0x20);
  CHECK(bench.read(reg::status_a) == 0x26); // update-in-progress clear
  CHECK(bench.read(reg::status_d) == reg::status_d_valid);

  bench.host_time += 61;
  CHECK(bench.read(reg::seconds) == 0x10);
  CHECK(bench.read(reg::minutes) == 0x46);
}

TEST_CASE("cmos-rtc: status B selects binary values and a 12-hour clock", "[unit]") {
  rtc_bench bench;
  bench.write(reg::status_b, reg::status_b_binary);
  CHECK(bench.read(reg::minutes) == 45);
  CHECK(bench.read(reg::hours) == (5 | reg::hour_pm));
  CHECK(bench.read(reg::year) == 26);

  bench.host_time -= 17 * 3600; // 00:45: hour 12 AM
  CHECK(bench.read(reg::hours) == 12);
}

TEST_CASE("cmos-rtc: the guest sets the clock with SET held, and it runs on from there",
          "[unit]") {
  rtc_bench bench;
  bench.write(reg::status_b, reg::status_b_set | reg::status_b_24_hour);
  bench.write(reg::hours, 0x08);
  bench.write(reg::minutes, 0x30);
  bench.write(reg::seconds, 0x00);
  bench.write(reg::year, 0x30);
  bench.host_time += 5; // halted: writing takes no time on the guest's clock
  CHECK(bench.read(reg::seconds) == 0x00);
  bench.write(reg::status_b, reg::status_b_24_hour);

  bench.host_time += 2;
  CHECK(bench.read(reg::hours) == 0x08);
  CHECK(bench.read(reg::minutes) == 0x30);
  CHECK(bench.read(reg::seconds) == 0x02);
  CHECK(bench.read(reg::year) == 0x30);
  CHECK(bench.read(reg::month) == 0x12);
}

TEST_CASE("cmos-rtc: RAM bytes keep what is written, C and D are read-only", "[unit]") {
  rtc_bench bench;
  bench.write(0x40, 0xa5);
  bench.write(0x7f, 0x5a);
  CHECK(bench.read(0x40) == 0xa5);
  CHECK(bench.read(0x7f) == 0x5a);
  bench.write(reg::status_c, 0xff);
  bench.write(reg::status_d, 0x00);
  CHECK(bench.read(reg::status_c) == 0);
  CHECK(bench.read(reg::status_d) == reg::status_d_valid);

  // Bit 7 of the index masks NMIs and does not change the register selected.
  const std::uint8_t masked_select = 0x80 | 0x40;
  bench.device.io_out(reg::index_port, std::span(&masked_select, 1));
  std::uint8_t value = 0;
  bench.device.io_in(reg::data_port, std::span(&value, 1));
  CHECK(value == 0xa5);
}
