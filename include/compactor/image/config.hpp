// The image configuration (OCI image spec config.md; Docker's image JSON is the same shape for
// the fields read here).
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/image/manifest.hpp>

namespace compactor::image {

struct config {
  platform platform_;
  std::vector<std::string> entrypoint;
  std::vector<std::string> cmd;
  std::vector<std::string> env; // "NAME=value"
  std::string working_dir;
  std::string user;
  std::string stop_signal;
  std::vector<std::string> exposed_ports; // "80/tcp"
  std::vector<std::string> volumes;
  std::map<std::string, std::string> labels;
  std::vector<std::string> diff_ids; // sha256 of each uncompressed layer, bottom first
};

namespace detail {

inline std::vector<std::string> string_list(const nlohmann::json& object, const char* key) {
  std::vector<std::string> result;
  const auto it = object.find(key);
  if (it == object.end() || it->is_null()) {
    return result;
  }
  if (!it->is_array()) {
    throw format_error(fmt::format("config field \"{}\" is not an array of strings", key));
  }
  for (const auto& item : *it) {
    if (!item.is_string()) {
      throw format_error(fmt::format("config field \"{}\" is not an array of strings", key));
    }
    result.push_back(item.get<std::string>());
  }
  return result;
}

inline std::vector<std::string> object_keys(const nlohmann::json& object, const char* key) {
  std::vector<std::string> result;
  const auto it = object.find(key);
  if (it != object.end() && it->is_object()) {
    for (const auto& item : it->items()) {
      result.push_back(item.key());
    }
  }
  return result;
}

} // namespace detail

inline config parse_config(std::string_view bytes) {
  const auto json = detail::parse_json(bytes, "the image config");
  config result;
  try {
    result.platform_.os = detail::string_field(json, "os");
    result.platform_.architecture = detail::string_field(json, "architecture");
    result.platform_.variant = detail::string_field(json, "variant");

    if (const auto it = json.find("config"); it != json.end() && it->is_object()) {
      const auto& c = *it;
      result.entrypoint = detail::string_list(c, "Entrypoint");
      result.cmd = detail::string_list(c, "Cmd");
      result.env = detail::string_list(c, "Env");
      result.working_dir = detail::string_field(c, "WorkingDir");
      result.user = detail::string_field(c, "User");
      result.stop_signal = detail::string_field(c, "StopSignal");
      result.exposed_ports = detail::object_keys(c, "ExposedPorts");
      result.volumes = detail::object_keys(c, "Volumes");
      if (const auto labels = c.find("Labels"); labels != c.end() && labels->is_object()) {
        for (const auto& [key, value] : labels->items()) {
          if (value.is_string()) {
            result.labels.emplace(key, value.get<std::string>());
          }
        }
      }
    }

    const auto rootfs = json.find("rootfs");
    if (rootfs == json.end() || !rootfs->is_object() ||
        detail::string_field(*rootfs, "type") != "layers") {
      throw format_error("the image config has no rootfs of type \"layers\"");
    }
    result.diff_ids = detail::string_list(*rootfs, "diff_ids");
  } catch (const nlohmann::json::exception& failure) {
    throw format_error(fmt::format("the image config is malformed: {}", failure.what()));
  }
  return result;
}

} // namespace compactor::image
