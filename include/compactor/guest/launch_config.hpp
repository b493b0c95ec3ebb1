// What the guest init runs: the image's ENTRYPOINT, CMD, ENV, WORKDIR and USER after the
// user's overrides, and the machine's hostname.
//
// The host (the exporter) writes it as a small JSON document into the initramfs at
// `launch_config_path`; the init, which the exporter places at `init_path` and the kernel
// starts through `rdinit=` (see `kernel_command_line()`), parses it. Keeping the init and its
// configuration under /.compactor leaves an image's own /init and /etc untouched.
//
//   {"version": 1, "entrypoint": ["/bin/sh", "-c"], "cmd": ["echo hi"],
//    "env": ["PATH=/usr/bin:/bin", "LANG=C.UTF-8"], "workdir": "/srv", "user": "www:www",
//    "hostname": "web"}
//
// `env` entries are NAME=value, already merged (see `merge_environment`); the init adds PATH,
// HOME and HOSTNAME where they are missing, as `docker run` does. `user` is empty (root), a name
// or uid, optionally followed by `:group` or `:gid`, resolved in the image's /etc/passwd and
// /etc/group (see user_database.hpp).
#pragma once

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <compactor/support/error.hpp>

namespace compactor::guest {

// Where the exporter puts the init and its configuration in the initramfs.
inline constexpr const char* init_path = "/.compactor/init";
inline constexpr const char* launch_config_path = "/.compactor/launch";

inline constexpr int launch_config_version = 1;

struct launch_config {
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env; // NAME=value
  std::string workdir;          // empty: /
  std::string user;             // empty: root
  std::string hostname;         // empty: `default_hostname`

  static constexpr const char* default_hostname = "compactor";

  // The workload's argument vector: ENTRYPOINT followed by CMD (Dockerfile reference,
  // "Understand how CMD and ENTRYPOINT interact").
  [[nodiscard]] std::vector<std::string> argv() const {
    auto result = entrypoint;
    result.insert(result.end(), cmd.begin(), cmd.end());
    return result;
  }

  bool operator==(const launch_config&) const = default;
};

namespace detail {

inline std::string_view env_name(std::string_view entry) {
  return entry.substr(0, entry.find('='));
}

} // namespace detail

// The image's environment with the user's entries applied: a user entry replaces the image's
// entry of the same name in place, new names are appended in the user's order. A user entry
// without '=' is ignored here (`docker run -e NAME` takes the value from the host's
// environment, which the caller resolves first).
[[nodiscard]] inline std::vector<std::string>
merge_environment(std::vector<std::string> image_env, const std::vector<std::string>& user_env) {
  for (const auto& entry : user_env) {
    if (entry.find('=') == std::string::npos) {
      continue;
    }
    const auto name = detail::env_name(entry);
    const auto same_name = [&](const std::string& existing) {
      return detail::env_name(existing) == name;
    };
    if (auto found = std::find_if(image_env.begin(), image_env.end(), same_name);
        found != image_env.end()) {
      *found = entry;
    } else {
      image_env.push_back(entry);
    }
  }
  return image_env;
}

[[nodiscard]] inline std::string write_launch_config(const launch_config& config) {
  const nlohmann::json document = {
      {"version", launch_config_version},
      {"entrypoint", config.entrypoint},
      {"cmd", config.cmd},
      {"env", config.env},
      {"workdir", config.workdir},
      {"user", config.user},
      {"hostname", config.hostname},
  };
  return document.dump() + "\n";
}

// Parses a launch configuration; throws compactor::error naming what is wrong. Members other
// than `version` may be missing (they take their empty defaults); unknown members are ignored
// so that a newer host can add some without breaking an older init.
[[nodiscard]] inline launch_config parse_launch_config(std::string_view text) {
  const auto document = nlohmann::json::parse(text, nullptr, false);
  if (document.is_discarded() || !document.is_object()) {
    throw error("the launch configuration is not a JSON object");
  }
  const auto version = document.find("version");
  if (version == document.end() || !version->is_number_integer() ||
      version->get<int>() != launch_config_version) {
    throw error("the launch configuration has no version or an unsupported one (this init "
                "reads version " + std::to_string(launch_config_version) + ")");
  }

  const auto strings = [&](const char* key) {
    std::vector<std::string> result;
    const auto member = document.find(key);
    if (member == document.end() || member->is_null()) {
      return result;
    }
    if (!member->is_array() ||
        !std::all_of(member->begin(), member->end(), [](const auto& v) { return v.is_string(); })) {
      throw error(std::string("launch configuration: \"") + key +
                  "\" must be an array of strings");
    }
    for (const auto& value : *member) {
      result.push_back(value.template get<std::string>());
    }
    return result;
  };
  const auto string = [&](const char* key) {
    const auto member = document.find(key);
    if (member == document.end() || member->is_null()) {
      return std::string();
    }
    if (!member->is_string()) {
      throw error(std::string("launch configuration: \"") + key + "\" must be a string");
    }
    return member->template get<std::string>();
  };

  launch_config config;
  config.entrypoint = strings("entrypoint");
  config.cmd = strings("cmd");
  config.env = strings("env");
  config.workdir = string("workdir");
  config.user = string("user");
  config.hostname = string("hostname");
  return config;
}

} // namespace compactor::guest
