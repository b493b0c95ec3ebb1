// compactor: container images to micro-VMs.
//
// Each subcommand lives in its own header beside this file; this file only wires them to the
// command line and turns any failure into one line on stderr and exit status 125, the status
// `docker run` uses when the tool itself fails.
#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "boot_command.hpp"
#include "export_command.hpp"
#include "host_check_command.hpp"
#include "inspect_command.hpp"
#include "run_command.hpp"

namespace {

constexpr int tool_failure_status = 125;

// The original form, `compactor --image IMAGE [run options]`, is `compactor run IMAGE [...]`.
std::vector<std::string> with_legacy_form_translated(int argc, char** argv) {
  std::vector<std::string> arguments(argv + 1, argv + argc);
  for (std::size_t n = 0; n < arguments.size(); ++n) {
    const std::string_view argument = arguments[n];
    if (argument == "--image" && n + 1 < arguments.size()) {
      auto image = arguments[n + 1];
      arguments.erase(arguments.begin() + static_cast<long>(n),
                      arguments.begin() + static_cast<long>(n) + 2);
      arguments.insert(arguments.begin(), {"run", image});
      break;
    }
    if (argument.starts_with("--image=")) {
      auto image = std::string(argument.substr(8));
      arguments.erase(arguments.begin() + static_cast<long>(n));
      arguments.insert(arguments.begin(), {"run", image});
      break;
    }
    if (!argument.starts_with("-")) {
      break; // a subcommand: nothing to translate
    }
  }
  return arguments;
}

} // namespace

int main(int argc, char** argv) {
  CLI::App app{"compactor: turn a container image into a running micro-VM"};
  app.set_version_flag("--version", "compactor 0.1.0");
  app.require_subcommand(0, 1);

  compactor::commands::run_command run;
  compactor::commands::add_run(app, run);
  compactor::commands::export_command export_image;
  compactor::commands::add_export(app, export_image);
  auto inspect = compactor::commands::add_inspect(app);
  compactor::commands::boot_command boot;
  compactor::commands::add_boot(app, boot);
  auto host_check = compactor::commands::add_host_check(app);

  auto arguments = with_legacy_form_translated(argc, argv);
  std::reverse(arguments.begin(), arguments.end()); // CLI11 takes them last first
  try {
    app.parse(arguments);
  } catch (const CLI::CallForHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForAllHelp& help) {
    return app.exit(help);
  } catch (const CLI::CallForVersion& version) {
    return app.exit(version);
  } catch (const CLI::ParseError& failure) {
    fmt::print(stderr, "compactor: {}\n", failure.what());
    return tool_failure_status;
  }

  try {
    if (run.parsed()) {
      return run.run();
    }
    if (export_image.parsed()) {
      return export_image.run();
    }
    if (inspect->parsed()) {
      return inspect.run();
    }
    if (boot.parsed()) {
      return boot.run();
    }
    if (host_check->parsed()) {
      return host_check.run();
    }
    std::fputs(app.help().c_str(), stdout);
    return 0;
  } catch (const std::exception& failure) {
    fmt::print(stderr, "compactor: {}\n", failure.what());
    return tool_failure_status;
  }
}
