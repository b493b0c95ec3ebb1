// Options that shape what the guest runs: `docker run`'s --env, --entrypoint, --workdir,
// --user, and files transferred from the host.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/initramfs/builder.hpp>

#include "options.hpp"

namespace compactor::commands {

struct launch_options {
  std::vector<std::string> env;
  std::vector<std::string> transfers;
  std::optional<std::string> entrypoint;
  std::optional<std::string> workdir;
  std::optional<std::string> user;
  std::optional<std::string> hostname;

  void add_to(CLI::App& command) {
    command.add_option("-e,--env", env, "NAME=value[,NAME=value...] for the workload (repeatable)")
        ->allow_extra_args(false);
    command
        .add_option("--transfer-files", transfers,
                    "HOST_PATH:GUEST_PATH[,...]: copy host files or directories into the guest")
        ->allow_extra_args(false);
    command.add_option("--entrypoint", entrypoint, "Replace the image's ENTRYPOINT (and its CMD)");
    command.add_option("-w,--workdir", workdir, "Working directory of the workload");
    command.add_option("-u,--user", user, "USER[:GROUP] (name or id) to run the workload as");
    command.add_option("--hostname", hostname, "The guest's hostname");
  }

  // The overrides; `command` is what follows the image on the command line (replaces CMD).
  [[nodiscard]] initramfs::overrides overrides(const std::vector<std::string>& command) const {
    initramfs::overrides result;
    if (entrypoint) {
      result.entrypoint = std::vector<std::string>{*entrypoint};
    }
    result.command = command;
    result.env = parse_environment(env);
    result.workdir = workdir;
    result.user = user;
    result.hostname = hostname;
    return result;
  }

  // The transfers, each host path checked to exist, so that a typo fails before any download.
  [[nodiscard]] std::vector<initramfs::transfer> transfer_list() const {
    std::vector<initramfs::transfer> result;
    for (const auto& item : parse_transfers(transfers)) {
      if (!std::filesystem::exists(std::filesystem::symlink_status(item.host))) {
        throw compactor::error(fmt::format("--transfer-files: {} does not exist",
                                           item.host.string()));
      }
      result.push_back({item.host, item.guest});
    }
    return result;
  }
};

} // namespace compactor::commands
