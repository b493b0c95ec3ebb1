// The main of every test program.
//
// Test cases name what the machine must offer with tags. Where the machine lacks it, the cases
// are left out and one line says what is missing; a program whose every case is left out
// exits with 77, which meson reports as SKIP. Services that the test command starts (dockerd,
// the registry) are not skipped this way: tests that need them fail when they are missing.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "requirements.hpp"

namespace {

constexpr int meson_skip_status = 77;

struct requirement {
  std::string tag; // without brackets, lower case
  std::function<std::optional<std::string>()> missing;
};

bool test_needs(const Catch::TestCase& test, const std::string& tag) {
  const auto& tags = test.getTestCaseInfo().lcaseTags;
  return std::find(tags.begin(), tags.end(), tag) != tags.end();
}

} // namespace

int main(int argc, char* argv[]) {
  Catch::Session session;
  if (const int status = session.applyCommandLine(argc, argv); status != 0) {
    return status;
  }

  const std::vector<requirement> requirements = {
      {"needs-kvm", compactor::testing::missing_kvm},
      {"needs-hardware-virtualization", compactor::testing::missing_hardware_virtualization},
      {"needs-qemu", compactor::testing::missing_qemu},
      {"needs-root", compactor::testing::missing_root},
  };

  const auto& all_tests = Catch::getRegistryHub().getTestCaseRegistry().getAllTests();
  std::vector<const Catch::TestCase*> runnable;
  for (const auto& test : all_tests) {
    runnable.push_back(&test);
  }

  auto& config = session.configData();
  for (const auto& need : requirements) {
    const bool used = std::any_of(runnable.begin(), runnable.end(),
                                  [&](const auto* test) { return test_needs(*test, need.tag); });
    if (!used) {
      continue;
    }
    if (const auto reason = need.missing()) {
      std::printf("SKIP tests tagged [%s]: %s\n", need.tag.c_str(), reason->c_str());
      std::erase_if(runnable, [&](const auto* test) { return test_needs(*test, need.tag); });
      config.testsOrTags.push_back("~[" + need.tag + "]");
    }
  }

  if (runnable.empty()) {
    return meson_skip_status;
  }
  session.useConfigData(config);
  return session.run();
}
