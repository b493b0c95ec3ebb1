// Image references as Docker spells them, and the transport prefixes skopeo uses.
//
// The grammar is the one of the distribution project's reference package:
//
//   reference  := name [ ":" tag ] [ "@" digest ]
//   name       := [ domain "/" ] path-component [ "/" path-component ]*
//   domain     := host [ ":" port ]          host: dotted labels, "localhost" or "[IPv6]"
//   path-comp. := [a-z0-9]+ ( separator [a-z0-9]+ )*     separator: "." | "_" | "__" | "-"+
//   tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//   digest     := algorithm ":" hex          (sha256: 64 lower-case hex digits)
//
// Docker's normalisation: the first component is a domain only when it contains "." or ":" or
// is "localhost" (or has an upper-case letter); otherwise the domain is docker.io, and a single
// component on docker.io lives under "library/". A reference without tag and digest means the
// tag "latest".
#pragma once

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/support/error.hpp>

namespace compactor::image {

// An image reference that is not valid; the message says which part is wrong.
class reference_error : public compactor::error {
public:
  using compactor::error::error;
};

struct reference {
  std::string domain; // "docker.io", "localhost:5000", "[::1]:5000"
  std::string path;   // "library/alpine"
  std::string tag;    // empty only when a digest is given and no tag
  std::string digest; // "sha256:<hex>" or empty

  // domain/path, e.g. "docker.io/library/alpine".
  [[nodiscard]] std::string name() const { return domain + "/" + path; }

  // The full normalised form: name[:tag][@digest].
  [[nodiscard]] std::string to_string() const {
    std::string text = name();
    if (!tag.empty()) {
      text += ":" + tag;
    }
    if (!digest.empty()) {
      text += "@" + digest;
    }
    return text;
  }

  // The short form Docker prints: "alpine:latest" for docker.io/library/alpine:latest.
  [[nodiscard]] std::string familiar() const {
    std::string text = path;
    if (domain != "docker.io") {
      text = name();
    } else if (text.starts_with("library/") && text.find('/', 8) == std::string::npos) {
      text.erase(0, 8);
    }
    if (!tag.empty()) {
      text += ":" + tag;
    }
    if (!digest.empty()) {
      text += "@" + digest;
    }
    return text;
  }

  // What a registry's /v2/<name>/manifests/<this> takes: the digest when known, else the tag.
  [[nodiscard]] std::string manifest_reference() const { return digest.empty() ? tag : digest; }

  friend bool operator==(const reference&, const reference&) = default;
};

namespace detail {

inline bool is_lower_alnum(char c) {
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

inline bool is_alnum(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) != 0;
}

inline bool is_hex(std::string_view text) {
  return std::ranges::all_of(text, [](char c) { return std::isxdigit((unsigned char)c) != 0; });
}

inline bool is_lower_hex(std::string_view text) {
  return std::ranges::all_of(
      text, [](char c) { return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'); });
}

// path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"+ ) [a-z0-9]+ )*
inline bool is_path_component(std::string_view text) {
  std::size_t at = 0;
  const auto alnum_run = [&] {
    const std::size_t start = at;
    while (at < text.size() && is_lower_alnum(text[at])) {
      ++at;
    }
    return at > start;
  };
  if (!alnum_run()) {
    return false;
  }
  while (at < text.size()) {
    const char c = text[at];
    if (c == '.') {
      ++at;
    } else if (c == '_') {
      at += (at + 1 < text.size() && text[at + 1] == '_') ? 2 : 1;
    } else if (c == '-') {
      while (at < text.size() && text[at] == '-') {
        ++at;
      }
    } else {
      return false;
    }
    if (!alnum_run()) {
      return false;
    }
  }
  return true;
}

// domain-component := [A-Za-z0-9] | [A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]
inline bool is_domain_component(std::string_view text) {
  if (text.empty() || !is_alnum(text.front()) || !is_alnum(text.back())) {
    return false;
  }
  return std::ranges::all_of(text, [](char c) { return is_alnum(c) || c == '-'; });
}

inline bool is_domain(std::string_view text) {
  std::string_view host = text;
  if (host.starts_with('[')) {
    const auto close = host.find(']');
    if (close == std::string_view::npos || close < 3) {
      return false;
    }
    const auto address = host.substr(1, close - 1);
    const bool ipv6_chars = std::ranges::all_of(address, [](char c) {
      return std::isxdigit(static_cast<unsigned char>(c)) != 0 || c == ':' || c == '.';
    });
    if (!ipv6_chars || address.find(':') == std::string_view::npos) {
      return false;
    }
    host = host.substr(close + 1);
    if (host.empty()) {
      return true;
    }
    if (!host.starts_with(':')) {
      return false;
    }
    const auto port = host.substr(1);
    return !port.empty() && std::ranges::all_of(port, [](char c) { return c >= '0' && c <= '9'; });
  }

  if (const auto colon = host.find(':'); colon != std::string_view::npos) {
    const auto port = host.substr(colon + 1);
    if (port.empty() || !std::ranges::all_of(port, [](char c) { return c >= '0' && c <= '9'; })) {
      return false;
    }
    host = host.substr(0, colon);
  }
  std::size_t start = 0;
  while (true) {
    const auto dot = host.find('.', start);
    if (!is_domain_component(host.substr(start, dot - start))) {
      return false;
    }
    if (dot == std::string_view::npos) {
      return true;
    }
    start = dot + 1;
  }
}

inline bool is_tag(std::string_view text) {
  if (text.empty() || text.size() > 128) {
    return false;
  }
  const auto word = [](char c) { return is_alnum(c) || c == '_'; };
  if (!word(text.front())) {
    return false;
  }
  return std::ranges::all_of(text, [&](char c) { return word(c) || c == '.' || c == '-'; });
}

} // namespace detail

// Checks "algorithm:hex" (OCI image spec, descriptor.md "Digests"); sha256 needs exactly 64
// lower-case hex digits, other registered or unknown algorithms at least 32 hex digits.
inline bool is_valid_digest(std::string_view digest) {
  const auto colon = digest.find(':');
  if (colon == std::string_view::npos || colon == 0) {
    return false;
  }
  const auto algorithm = digest.substr(0, colon);
  const auto hex = digest.substr(colon + 1);
  if (algorithm == "sha256") {
    return hex.size() == 64 && detail::is_lower_hex(hex);
  }
  if (algorithm == "sha512") {
    return hex.size() == 128 && detail::is_lower_hex(hex);
  }
  const bool algorithm_ok = std::ranges::all_of(algorithm, [](char c) {
    return detail::is_alnum(c) || c == '+' || c == '.' || c == '_' || c == '-';
  });
  return algorithm_ok && std::isalpha(static_cast<unsigned char>(algorithm.front())) &&
         hex.size() >= 32 && detail::is_hex(hex);
}

// Parses and normalises a reference the way `docker pull` does.
inline reference parse_reference(std::string_view text) {
  const auto fail = [&](std::string_view why) -> reference_error {
    return reference_error(fmt::format("invalid image reference \"{}\": {}", text, why));
  };
  if (text.empty()) {
    throw fail("it is empty");
  }

  reference result;
  std::string_view rest = text;
  if (const auto at = rest.find('@'); at != std::string_view::npos) {
    result.digest = std::string(rest.substr(at + 1));
    rest = rest.substr(0, at);
    if (!is_valid_digest(result.digest)) {
      throw fail(fmt::format("\"{}\" is not a digest (expected sha256: and 64 lower-case hex "
                             "digits)",
                             result.digest));
    }
  }

  // A tag follows the last ':' when no '/' comes after it (a ':' before a '/' is a port).
  const auto colon = rest.rfind(':');
  if (colon != std::string_view::npos && rest.find('/', colon) == std::string_view::npos) {
    result.tag = std::string(rest.substr(colon + 1));
    rest = rest.substr(0, colon);
    if (!detail::is_tag(result.tag)) {
      throw fail(fmt::format("\"{}\" is not a valid tag (letters, digits, '_', '.', '-'; at "
                             "most 128, not starting with '.' or '-')",
                             result.tag));
    }
  }
  if (rest.empty()) {
    throw fail("the repository name is empty");
  }

  std::string_view path = rest;
  const auto slash = rest.find('/');
  if (slash != std::string_view::npos) {
    const auto first = rest.substr(0, slash);
    const bool has_upper = std::ranges::any_of(first, [](char c) { return c >= 'A' && c <= 'Z'; });
    if (first.find_first_of(".:") != std::string_view::npos || first == "localhost" ||
        first.starts_with('[') || has_upper) {
      if (!detail::is_domain(first)) {
        throw fail(fmt::format("\"{}\" is not a valid registry host[:port]", first));
      }
      result.domain = std::string(first);
      path = rest.substr(slash + 1);
    }
  }
  if (result.domain.empty() || result.domain == "index.docker.io") {
    result.domain = "docker.io";
  }

  if (path.empty()) {
    throw fail("the repository name is empty");
  }
  if (std::ranges::any_of(path, [](char c) { return c >= 'A' && c <= 'Z'; })) {
    throw fail("repository names must be lower case");
  }
  std::size_t start = 0;
  while (true) {
    const auto next = path.find('/', start);
    const auto component = path.substr(start, next - start);
    if (!detail::is_path_component(component)) {
      throw fail(fmt::format("\"{}\" is not a valid repository name component (lower-case "
                             "letters and digits, separated by '.', '_', '__' or '-')",
                             component));
    }
    if (next == std::string_view::npos) {
      break;
    }
    start = next + 1;
  }
  if (path.size() == 64 && detail::is_lower_hex(path) && slash == std::string_view::npos) {
    throw fail("a 64-digit hexadecimal string is an image ID, not a repository name");
  }
  result.path = std::string(path);
  if (result.domain == "docker.io" && result.path.find('/') == std::string::npos) {
    result.path = "library/" + result.path;
  }
  if (result.name().size() > 255) {
    throw fail("the repository name is longer than 255 characters");
  }

  if (result.tag.empty() && result.digest.empty()) {
    result.tag = "latest";
  }
  return result;
}

// Where an image comes from, as skopeo spells the transports.
enum class transport {
  automatic,      // a bare reference: the Docker daemon when one answers, else the registry
  docker_daemon,  // docker-daemon:NAME[:TAG] or docker-daemon:sha256:ID
  registry,       // docker://REF
  docker_archive, // docker-archive:PATH[:NAME[:TAG]]  (`docker save` output)
  oci_layout,     // oci:DIR[:TAG]
  oci_archive,    // oci-archive:PATH[:TAG]
};

inline std::string_view transport_name(transport kind) {
  switch (kind) {
  case transport::automatic:
    return "automatic";
  case transport::docker_daemon:
    return "docker-daemon";
  case transport::registry:
    return "docker";
  case transport::docker_archive:
    return "docker-archive";
  case transport::oci_layout:
    return "oci";
  case transport::oci_archive:
    return "oci-archive";
  }
  return "unknown";
}

struct location {
  transport kind = transport::automatic;
  reference ref;              // daemon and registry; for archives when a name is given
  bool has_ref = false;       // false for archives and layouts without a name or tag
  std::string image_id;       // docker-daemon:sha256:ID
  std::filesystem::path path; // archives and layouts
  std::string tag;            // oci:DIR:TAG, oci-archive:PATH:TAG

  [[nodiscard]] std::string to_string() const {
    switch (kind) {
    case transport::automatic:
      return ref.to_string();
    case transport::registry:
      return "docker://" + ref.to_string();
    case transport::docker_daemon:
      return "docker-daemon:" + (image_id.empty() ? ref.to_string() : image_id);
    case transport::docker_archive:
      return "docker-archive:" + path.string() + (has_ref ? ":" + ref.familiar() : "");
    case transport::oci_layout:
    case transport::oci_archive:
      return std::string(transport_name(kind)) + ":" + path.string() +
             (tag.empty() ? "" : ":" + tag);
    }
    return ref.to_string();
  }
};

// Parses "TRANSPORT:..." or a bare reference. A path is everything up to the first ':' after
// the transport, as in skopeo.
inline location parse_location(std::string_view text) {
  location result;
  const auto split_path = [&](std::string_view rest) {
    const auto colon = rest.find(':');
    result.path = std::string(rest.substr(0, colon));
    if (result.path.empty()) {
      throw reference_error(fmt::format("invalid image location \"{}\": the path is empty", text));
    }
    return colon == std::string_view::npos ? std::string_view() : rest.substr(colon + 1);
  };

  if (text.starts_with("docker://")) {
    result.kind = transport::registry;
    result.ref = parse_reference(text.substr(9));
    result.has_ref = true;
  } else if (text.starts_with("docker-daemon:")) {
    result.kind = transport::docker_daemon;
    const auto name = text.substr(14);
    if (name.starts_with("sha256:")) {
      if (!is_valid_digest(name)) {
        throw reference_error(fmt::format("invalid image location \"{}\": \"{}\" is not an "
                                          "image ID (sha256: and 64 hex digits)",
                                          text, name));
      }
      result.image_id = std::string(name);
    } else {
      result.ref = parse_reference(name);
      result.has_ref = true;
    }
  } else if (text.starts_with("docker-archive:")) {
    result.kind = transport::docker_archive;
    const auto name = split_path(text.substr(15));
    if (!name.empty()) {
      result.ref = parse_reference(name);
      result.has_ref = true;
    }
  } else if (text.starts_with("oci:") || text.starts_with("oci-archive:")) {
    result.kind = text.starts_with("oci:") ? transport::oci_layout : transport::oci_archive;
    // The name in an OCI layout is an annotation (org.opencontainers.image.ref.name) that
    // may be a tag or a whole reference, so it is taken as it is.
    result.tag = std::string(split_path(text.substr(text.find(':') + 1)));
  } else {
    result.ref = parse_reference(text);
    result.has_ref = true;
  }
  return result;
}

} // namespace compactor::image
