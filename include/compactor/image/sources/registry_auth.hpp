// Registry credentials and authentication challenges: the `auths` of the Docker client's
// config.json, and the parameters of a WWW-Authenticate header.
#pragma once

#include <openssl/evp.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include <compactor/net/http_client.hpp>

namespace compactor::image {

namespace detail {

inline std::string base64(std::string_view text) {
  std::string out(4 * ((text.size() + 2) / 3) + 1, '\0');
  const int length = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                                     reinterpret_cast<const unsigned char*>(text.data()),
                                     static_cast<int>(text.size()));
  out.resize(static_cast<std::size_t>(length));
  return out;
}

inline std::filesystem::path default_docker_config() {
  if (const char* directory = std::getenv("DOCKER_CONFIG"); directory != nullptr && *directory) {
    return std::filesystem::path(directory) / "config.json";
  }
  if (const char* home = std::getenv("HOME"); home != nullptr && *home) {
    return std::filesystem::path(home) / ".docker" / "config.json";
  }
  return {};
}

inline std::string_view trim(std::string_view text) {
  return net::detail::trim(text);
}

// The params of a WWW-Authenticate challenge (RFC 7235, section 4.1): scheme and key="value".
struct challenge {
  std::string scheme;
  std::map<std::string, std::string> params;
};

inline challenge parse_challenge(std::string_view text) {
  challenge result;
  const auto space = text.find(' ');
  result.scheme = std::string(text.substr(0, space));
  std::ranges::transform(result.scheme, result.scheme.begin(),
                         [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  std::size_t at = space == std::string_view::npos ? text.size() : space + 1;
  while (at < text.size()) {
    while (at < text.size() && (text[at] == ' ' || text[at] == ',')) {
      ++at;
    }
    const auto equals = text.find('=', at);
    if (equals == std::string_view::npos) {
      break;
    }
    const auto key = std::string(trim(text.substr(at, equals - at)));
    at = equals + 1;
    std::string value;
    if (at < text.size() && text[at] == '"') {
      for (++at; at < text.size() && text[at] != '"'; ++at) {
        if (text[at] == '\\' && at + 1 < text.size()) {
          ++at;
        }
        value += text[at];
      }
      ++at;
    } else {
      const auto end = std::min(text.find(',', at), text.size());
      value = std::string(trim(text.substr(at, end - at)));
      at = end;
    }
    result.params[key] = value;
  }
  return result;
}

} // namespace detail

// The Basic credentials (base64 of "user:password") the Docker config holds for `domain`.
inline std::optional<std::string> find_registry_auth(const std::filesystem::path& config_file,
                                                     std::string_view domain) {
  std::ifstream stream(config_file);
  if (!stream) {
    return std::nullopt;
  }
  const auto config = nlohmann::json::parse(stream, nullptr, false);
  if (!config.is_object() || !config.contains("auths") || !config["auths"].is_object()) {
    return std::nullopt;
  }
  const std::vector<std::string> keys =
      domain == "docker.io"
          ? std::vector<std::string>{"https://index.docker.io/v1/", "index.docker.io", "docker.io",
                                     "registry-1.docker.io"}
          : std::vector<std::string>{std::string(domain), "https://" + std::string(domain),
                                     "http://" + std::string(domain)};
  for (const auto& item : config["auths"].items()) {
    const std::string& key = item.key();
    const auto& entry = item.value();
    // "https://host/" and "host" name the same registry.
    auto bare = std::string_view(key);
    if (bare.ends_with('/')) {
      bare.remove_suffix(1);
    }
    const bool matches = std::ranges::any_of(keys, [&](const std::string& candidate) {
      return candidate == key || std::string_view(candidate) == bare;
    });
    if (!matches || !entry.is_object()) {
      continue;
    }
    if (const auto auth = entry.value("auth", std::string()); !auth.empty()) {
      return auth;
    }
    const auto user = entry.value("username", std::string());
    if (!user.empty()) {
      return detail::base64(user + ":" + entry.value("password", std::string()));
    }
  }
  return std::nullopt;
}

} // namespace compactor::image
