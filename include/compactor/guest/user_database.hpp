// Resolves a container's USER against the image's /etc/passwd and /etc/group, the way
// `docker run` does, without the C library's name service (which a static init cannot load).
//
//   ""            root: uid 0, gid 0
//   "name"        the passwd entry; supplementary groups: every group that lists the name
//   "1000"        the passwd entry with that uid if there is one, otherwise uid 1000, gid 0
//   "name:group"  the group (a name, or a number that need not exist) replaces the primary gid
//                 and no supplementary groups are added
//
// HOME is the passwd entry's home directory, or / when there is none.
#pragma once

#include <sys/types.h>

#include <charconv>
#include <cstdint>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

#include <compactor/support/error.hpp>

namespace compactor::guest {

struct passwd_entry {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
  std::string home;
};

struct group_entry {
  std::string name;
  gid_t gid = 0;
  std::vector<std::string> members;
};

// Who the workload runs as.
struct exec_user {
  uid_t uid = 0;
  gid_t gid = 0;
  std::vector<gid_t> supplementary_gids;
  std::string home = "/";

  bool operator==(const exec_user&) const = default;
};

namespace detail {

inline std::vector<std::string> split(std::string_view text, char separator) {
  std::vector<std::string> fields;
  std::size_t start = 0;
  while (true) {
    const auto end = text.find(separator, start);
    fields.emplace_back(text.substr(start, end - start));
    if (end == std::string_view::npos) {
      return fields;
    }
    start = end + 1;
  }
}

template <typename Number>
std::optional<Number> parse_id(std::string_view text) {
  std::uint32_t value = 0;
  const auto [rest, failure] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || failure != std::errc() || rest != text.data() + text.size()) {
    return std::nullopt;
  }
  return static_cast<Number>(value);
}

// The lines of a colon-separated database, without comments, blank lines and NIS "+" lines.
inline std::vector<std::vector<std::string>> database_rows(std::string_view text,
                                                           std::size_t minimum_fields) {
  std::vector<std::vector<std::string>> rows;
  std::istringstream lines{std::string(text)};
  for (std::string line; std::getline(lines, line);) {
    if (line.empty() || line.front() == '#' || line.front() == '+' || line.front() == '-') {
      continue;
    }
    auto fields = split(line, ':');
    if (fields.size() >= minimum_fields) {
      rows.push_back(std::move(fields));
    }
  }
  return rows;
}

} // namespace detail

// Entries of an /etc/passwd text (name:password:uid:gid:gecos:home:shell); malformed lines are
// skipped, as the C library does.
[[nodiscard]] inline std::vector<passwd_entry> parse_passwd(std::string_view text) {
  std::vector<passwd_entry> entries;
  for (const auto& fields : detail::database_rows(text, 4)) {
    const auto uid = detail::parse_id<uid_t>(fields[2]);
    const auto gid = detail::parse_id<gid_t>(fields[3]);
    if (!uid || !gid) {
      continue;
    }
    entries.push_back({fields[0], *uid, *gid, fields.size() > 5 ? fields[5] : std::string()});
  }
  return entries;
}

// Entries of an /etc/group text (name:password:gid:member,member,...).
[[nodiscard]] inline std::vector<group_entry> parse_group(std::string_view text) {
  std::vector<group_entry> entries;
  for (const auto& fields : detail::database_rows(text, 3)) {
    const auto gid = detail::parse_id<gid_t>(fields[2]);
    if (!gid) {
      continue;
    }
    group_entry entry{fields[0], *gid, {}};
    if (fields.size() > 3 && !fields[3].empty()) {
      entry.members = detail::split(fields[3], ',');
    }
    entries.push_back(std::move(entry));
  }
  return entries;
}

// Resolves a USER value (see the top of this file). Throws compactor::error when a name is not
// in the databases.
[[nodiscard]] inline exec_user resolve_user(std::string_view spec,
                                            const std::vector<passwd_entry>& passwd,
                                            const std::vector<group_entry>& groups) {
  const auto colon = spec.find(':');
  const auto user_part = spec.substr(0, colon);
  const auto group_part =
      colon == std::string_view::npos ? std::string_view() : spec.substr(colon + 1);

  exec_user result;
  const passwd_entry* matched = nullptr;
  const auto numeric_uid = detail::parse_id<uid_t>(user_part);
  for (const auto& entry : passwd) {
    if (user_part.empty() ? entry.uid == 0
                          : (numeric_uid ? entry.uid == *numeric_uid : entry.name == user_part)) {
      matched = &entry;
      break;
    }
  }
  if (matched != nullptr) {
    result.uid = matched->uid;
    result.gid = matched->gid;
    if (!matched->home.empty()) {
      result.home = matched->home;
    }
  } else if (numeric_uid) {
    result.uid = *numeric_uid;
  } else if (!user_part.empty()) {
    throw error("unable to find user " + std::string(user_part) +
                ": no matching entries in passwd file");
  }

  if (!group_part.empty()) {
    if (const auto numeric_gid = detail::parse_id<gid_t>(group_part)) {
      result.gid = *numeric_gid;
      return result;
    }
    for (const auto& group : groups) {
      if (group.name == group_part) {
        result.gid = group.gid;
        return result;
      }
    }
    throw error("unable to find group " + std::string(group_part) +
                ": no matching entries in group file");
  }

  if (matched != nullptr) {
    for (const auto& group : groups) {
      for (const auto& member : group.members) {
        if (member == matched->name && group.gid != result.gid) {
          result.supplementary_gids.push_back(group.gid);
        }
      }
    }
  }
  return result;
}

} // namespace compactor::guest
