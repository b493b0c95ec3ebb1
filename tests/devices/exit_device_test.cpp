#include <catch2/catch.hpp>

#include <set>

#include <compactor/devices/exit_device.hpp>
#include <compactor/guest/protocol.hpp>

#include "device_harness.hpp"

using namespace compactor;

TEST_CASE("exit device: a write to the exit port ends the run with that status", "[unit]") {
  testing::device_harness harness;
  devices::exit_device device;
  device.attach(harness.context, {});
  for (const std::uint8_t status : {std::uint8_t{0}, std::uint8_t{125}, std::uint8_t{255}}) {
    device.io_out(guest::exit_status_port, std::span(&status, 1));
    REQUIRE_FALSE(harness.ends.empty());
    CHECK(harness.ends.back().outcome == vmm::run_outcome::exited);
    CHECK(harness.ends.back().status == status);
    CHECK(device.exit_status() == status);
  }
}

TEST_CASE("exit device: the boot marker records when the init started", "[unit]") {
  testing::device_harness harness;
  devices::exit_device device;
  device.attach(harness.context, {});
  CHECK_FALSE(device.init_reached());

  const auto before = devices::exit_device::clock::now();
  const std::uint8_t marker = guest::boot_marker_init_reached;
  device.io_out(guest::boot_marker_port, std::span(&marker, 1));
  REQUIRE(device.init_reached());
  CHECK(*device.init_reached() >= before);
  CHECK(harness.ends.empty());

  const std::uint8_t reserved = 7;
  device.io_out(guest::boot_marker_port, std::span(&reserved, 1));
  device.io_out(guest::boot_marker_port, std::span(&reserved, 1));
  CHECK(harness.logs.size() == 1);

  std::uint8_t read = 0;
  device.io_in(guest::exit_status_port, std::span(&read, 1));
  CHECK(read == 0xff);
}

TEST_CASE("run report: one line and a distinct process status per outcome", "[unit]") {
  vmm::run_report exited{vmm::run_outcome::exited, 3, {}, {}};
  CHECK(exited.summary() == "guest exited with status 3");
  CHECK(exited.process_exit_status() == 3);

  std::set<int> statuses;
  for (const auto outcome :
       {vmm::run_outcome::reset, vmm::run_outcome::shutdown, vmm::run_outcome::internal_error,
        vmm::run_outcome::failed_entry, vmm::run_outcome::unhandled_exit,
        vmm::run_outcome::timed_out, vmm::run_outcome::stopped, vmm::run_outcome::host_error}) {
    vmm::run_report report{outcome, std::nullopt, "why", {}};
    CHECK_THAT(report.summary(), Catch::Contains(std::string(vmm::to_string(outcome))) &&
                                     Catch::EndsWith(": why"));
    statuses.insert(report.process_exit_status());
  }
  CHECK(statuses.size() == 8);
}
