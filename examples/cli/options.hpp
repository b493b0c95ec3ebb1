// Parsers for the values of `compactor` options that carry more than one thing.
#pragma once

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <compactor/hypervisors/guest_spec.hpp>
#include <compactor/support/error.hpp>

namespace compactor::commands {

namespace detail {

// True when `text` starts with an environment variable name followed by '='.
inline bool starts_with_assignment(std::string_view text) {
  const auto equals = text.find('=');
  if (equals == 0 || equals == std::string_view::npos) {
    return false;
  }
  const auto name = text.substr(0, equals);
  const bool leading_ok = std::isalpha(static_cast<unsigned char>(name[0])) || name[0] == '_';
  return leading_ok && std::all_of(name.begin(), name.end(), [](char c) {
           return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
         });
}

inline std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> parts;
  std::size_t start = 0;
  for (std::size_t at; (at = text.find(separator, start)) != std::string_view::npos;
       start = at + 1) {
    parts.emplace_back(text.substr(start, at - start));
  }
  parts.emplace_back(text.substr(start));
  return parts;
}

} // namespace detail

// `--env` values, each one or more NAME=value entries separated by commas
// (`--env DEBUG=true,LOG_LEVEL=info`). A comma followed by something that is not NAME=
// belongs to the value (`--env LIST=a,b`). A bare NAME takes its value from this process's
// environment, as `docker run -e NAME` does, and is left out when unset there.
inline std::vector<std::string> parse_environment(const std::vector<std::string>& values) {
  std::vector<std::string> entries;
  for (const auto& value : values) {
    const auto parts = detail::split(value, ',');
    for (std::size_t n = 0; n < parts.size(); ++n) {
      const auto& part = parts[n];
      if (n > 0 && !entries.empty() && !detail::starts_with_assignment(part) &&
          part.find('=') == std::string::npos && detail::starts_with_assignment(entries.back())) {
        entries.back() += "," + part;
        continue;
      }
      if (part.empty()) {
        throw compactor::error(fmt::format("--env '{}': empty entry", value));
      }
      if (part.find('=') != std::string::npos) {
        if (!detail::starts_with_assignment(part)) {
          throw compactor::error(
              fmt::format("--env '{}': '{}' does not start with a variable name", value, part));
        }
        entries.push_back(part);
      } else if (const char* host_value = std::getenv(part.c_str())) {
        entries.push_back(part + "=" + host_value);
      }
    }
  }
  return entries;
}

// A host file or directory copied into the guest's root file system.
struct transferred_file {
  std::filesystem::path host;
  std::string guest; // absolute

  bool operator==(const transferred_file&) const = default;
};

// `--transfer-files` values: HOST:GUEST pairs separated by commas.
inline std::vector<transferred_file> parse_transfers(const std::vector<std::string>& values) {
  std::vector<transferred_file> transfers;
  for (const auto& value : values) {
    for (const auto& pair : detail::split(value, ',')) {
      const auto colon = pair.rfind(':');
      if (colon == std::string::npos || colon == 0 || colon + 1 == pair.size()) {
        throw compactor::error(
            fmt::format("--transfer-files '{}': expected HOST_PATH:GUEST_PATH", pair));
      }
      transferred_file transfer{pair.substr(0, colon), pair.substr(colon + 1)};
      if (!transfer.guest.starts_with('/')) {
        throw compactor::error(fmt::format(
            "--transfer-files '{}': the guest path must be absolute", pair));
      }
      transfers.push_back(std::move(transfer));
    }
  }
  return transfers;
}

// `--disk PATH[:ro|:rw]`.
inline hypervisors::disk parse_disk(const std::string& value) {
  hypervisors::disk disk{value, false};
  if (value.ends_with(":ro") || value.ends_with(":rw")) {
    disk.read_only = value.ends_with(":ro");
    disk.path = value.substr(0, value.size() - 3);
  }
  if (disk.path.empty()) {
    throw compactor::error(fmt::format("--disk '{}': no path", value));
  }
  return disk;
}

} // namespace compactor::commands
