// compactor: container images to micro-VMs.
//
// Each subcommand lives in its own header beside this file; this file only wires them to the
// command line and turns any failure into one line on stderr and exit status 125, the status
// `docker run` uses when the tool itself fails.
#include <cstdio>
#include <exception>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "boot_command.hpp"
#include "host_check_command.hpp"

namespace {

constexpr int tool_failure_status = 125;

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"compactor: turn a container image into a running micro-VM"};
  app.set_version_flag("--version", "compactor 0.1.0");
  app.require_subcommand(0, 1);

  auto host_check = compactor::commands::add_host_check(app);
  compactor::commands::boot_command boot;
  compactor::commands::add_boot(app, boot);

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForVersion& version) {
    return app.exit(version);
  } catch (const CLI::ParseError& failure) {
    fmt::print(stderr, "compactor: {}\n", failure.what());
    return tool_failure_status;
  }

  try {
    if (host_check->parsed()) {
      return host_check.run();
    }
    if (boot.parsed()) {
      return boot.run();
    }
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const std::exception& failure) {
    fmt::print(stderr, "compactor: {}\n", failure.what());
    return tool_failure_status;
  }
}
