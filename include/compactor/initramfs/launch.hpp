// The launch configuration of a guest: the image's ENTRYPOINT, CMD, ENV, WORKDIR and USER with
// the user's overrides applied as `docker run` applies them.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include <compactor/guest/launch_config.hpp>
#include <compactor/image/config.hpp>

namespace compactor::initramfs {

struct overrides {
  std::optional<std::vector<std::string>> entrypoint; // replaces ENTRYPOINT and drops CMD
  std::vector<std::string> command;                   // non-empty: replaces CMD
  std::vector<std::string> env;                       // NAME=value, applied over ENV
  std::optional<std::string> workdir;
  std::optional<std::string> user;
  std::optional<std::string> hostname;
};

[[nodiscard]] inline guest::launch_config make_launch_config(const image::config& image,
                                                             const overrides& user) {
  guest::launch_config launch;
  launch.entrypoint = image.entrypoint;
  launch.cmd = image.cmd;
  if (user.entrypoint) {
    // `docker run --entrypoint` also clears the image's CMD.
    launch.entrypoint = *user.entrypoint;
    launch.cmd.clear();
  }
  if (!user.command.empty()) {
    launch.cmd = user.command;
  }
  launch.env = guest::merge_environment(image.env, user.env);
  launch.workdir = user.workdir.value_or(image.working_dir);
  launch.user = user.user.value_or(image.user);
  launch.hostname = user.hostname.value_or("");
  return launch;
}

} // namespace compactor::initramfs
