#include <catch2/catch.hpp>

#include <compactor/devices/i8042.hpp>

#include "device_harness.hpp"

using namespace compactor;

namespace {

struct i8042_bench {
  testing::device_harness harness;
  devices::i8042 device;

  i8042_bench() { device.attach(harness.context, vmm::device_slot{}); }

  std::uint8_t in(std::uint16_t port) {
    std::uint8_t value = 0;
    device.io_in(port, std::span(&value, 1));
    return value;
  }
  void out(std::uint16_t port, std::uint8_t value) {
    device.io_out(port, std::span(&value, 1));
  }
};

} // namespace

TEST_CASE("i8042: self test answers 0x55 through the output buffer", "[unit]") {
  i8042_bench bench;
  CHECK((bench.in(0x64) & 0x01) == 0);
  bench.out(0x64, 0xaa);
  CHECK((bench.in(0x64) & 0x01) == 0x01);
  CHECK(bench.in(0x60) == 0x55);
  CHECK((bench.in(0x64) & 0x01) == 0);
  CHECK(bench.harness.ends.empty());
}

TEST_CASE("i8042: the configuration byte is read with 0x20 and written with 0x60", "[unit]") {
  i8042_bench bench;
  bench.out(0x64, 0x60);
  bench.out(0x60, 0x47);
  CHECK(bench.device.controller_configuration() == 0x47);
  bench.out(0x64, 0x20);
  CHECK(bench.in(0x60) == 0x47);
}

TEST_CASE("i8042: command 0xFE (reboot=k) ends the run with a reset", "[unit]") {
  i8042_bench bench;
  bench.out(0x64, 0xfe);
  REQUIRE(bench.harness.ends.size() == 1);
  CHECK(bench.harness.ends[0].outcome == vmm::run_outcome::reset);
  CHECK_THAT(bench.harness.ends[0].detail, Catch::Contains("0xfe"));
  CHECK(bench.device.reset_requested());
}

TEST_CASE("i8042: other pulse commands and output-port writes reset only via bit 0",
          "[unit]") {
  i8042_bench bench;
  bench.out(0x64, 0xff); // pulses nothing
  bench.out(0x64, 0xd1);
  bench.out(0x60, 0x03); // reset line stays high
  CHECK(bench.harness.ends.empty());
  bench.out(0x64, 0xd1);
  bench.out(0x60, 0x02);
  REQUIRE(bench.harness.ends.size() == 1);
  CHECK(bench.harness.ends[0].outcome == vmm::run_outcome::reset);
}

TEST_CASE("i8042: unknown commands and keyboard bytes are ignored and logged once", "[unit]") {
  i8042_bench bench;
  bench.out(0x64, 0xc0);
  bench.out(0x60, 0xf4);
  bench.out(0x64, 0xc0);
  CHECK(bench.harness.logs.size() == 1);
  CHECK(bench.harness.ends.empty());
  CHECK(bench.device.cmdline_fragment({}).find("reboot=k") != std::string::npos);
}
