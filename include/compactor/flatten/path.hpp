// Names of layer entries made canonical: relative to the image root, no "." or empty parts,
// no trailing slash, and never above the root.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace compactor::flatten {

// "./a//b/" -> "a/b", "/etc/../etc/passwd" -> "etc/passwd", "." -> "" (the root itself).
// Returns nothing when a ".." would climb above the root.
inline std::optional<std::string> canonical_path(std::string_view name) {
  std::vector<std::string_view> parts;
  while (!name.empty()) {
    const auto slash = name.find('/');
    const auto part = name.substr(0, slash);
    name = slash == std::string_view::npos ? std::string_view() : name.substr(slash + 1);
    if (part.empty() || part == ".") {
      continue;
    }
    if (part == "..") {
      if (parts.empty()) {
        return std::nullopt;
      }
      parts.pop_back();
      continue;
    }
    parts.push_back(part);
  }

  std::string path;
  for (const auto part : parts) {
    if (!path.empty()) {
      path += '/';
    }
    path += part;
  }
  return path;
}

// The directory holding `path`: "a/b" -> "a", "a" -> "" (the root).
inline std::string_view parent_path(std::string_view path) {
  const auto slash = path.rfind('/');
  return slash == std::string_view::npos ? std::string_view() : path.substr(0, slash);
}

inline std::string_view base_name(std::string_view path) {
  const auto slash = path.rfind('/');
  return slash == std::string_view::npos ? path : path.substr(slash + 1);
}

// Calls `visit(ancestor)` for every directory above `path`, from the root's child downwards:
// "a/b/c" -> "a", "a/b". The root itself ("") is not visited.
template <typename Visit>
void for_each_ancestor(std::string_view path, Visit&& visit) {
  for (auto slash = path.find('/'); slash != std::string_view::npos;
       slash = path.find('/', slash + 1)) {
    visit(path.substr(0, slash));
  }
}

} // namespace compactor::flatten
