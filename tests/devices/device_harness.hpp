// A device_context for driving a device through its registers without a VM: interrupt-line
// changes, end-of-run requests and log lines are recorded for the test to inspect.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <compactor/vmm/device.hpp>

namespace compactor::testing {

struct device_harness {
  struct end_request {
    vmm::run_outcome outcome;
    std::optional<std::uint8_t> status;
    std::string detail;
  };

  std::vector<std::pair<std::uint32_t, bool>> irq_changes;
  std::vector<end_request> ends;
  std::vector<std::string> logs;

  vmm::device_context context{
      [this](std::uint32_t line, bool level) { irq_changes.emplace_back(line, level); },
      [this](vmm::run_outcome outcome, std::optional<std::uint8_t> status, std::string detail) {
        ends.push_back({outcome, status, std::move(detail)});
      },
      [this](std::string_view line) { logs.emplace_back(line); }};

  device_harness() = default;
  device_harness(const device_harness&) = delete;
  device_harness& operator=(const device_harness&) = delete;
};

} // namespace compactor::testing
