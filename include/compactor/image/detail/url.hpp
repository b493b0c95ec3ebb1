// Small URL helpers for the Engine API and registry requests.
#pragma once

#include <cctype>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace compactor::image::detail {

// Percent-encodes everything but RFC 3986 unreserved characters, for query values.
inline std::string percent_encode(std::string_view text) {
  std::string out;
  for (const char c : text) {
    if (std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      out += c;
    } else {
      out += fmt::format("%{:02X}", static_cast<unsigned char>(c));
    }
  }
  return out;
}

// scheme://host[:port] of an absolute URL.
inline std::string url_origin(std::string_view url) {
  const auto scheme_end = url.find("://");
  if (scheme_end == std::string_view::npos) {
    return {};
  }
  const auto path = url.find('/', scheme_end + 3);
  return std::string(url.substr(0, path));
}

// A Location header resolved against the URL it came from.
inline std::string resolve_location(std::string_view base, std::string_view location) {
  if (location.find("://") != std::string_view::npos) {
    return std::string(location);
  }
  if (location.starts_with("//")) {
    return std::string(base.substr(0, base.find("://") + 1)) + std::string(location);
  }
  if (location.starts_with('/')) {
    return url_origin(base) + std::string(location);
  }
  return std::string(base.substr(0, base.rfind('/') + 1)) + std::string(location);
}

} // namespace compactor::image::detail
