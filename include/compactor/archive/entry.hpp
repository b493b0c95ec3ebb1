// One member of an archive: the metadata that an initramfs or a tar keeps for a path.
#pragma once

#include <cstdint>
#include <string>
#include <utility>

namespace compactor::archive {

enum class file_type { regular, directory, symlink, fifo, character_device, block_device, socket };

struct attributes {
  std::uint32_t permissions = 0644; // the 07777 bits: rwx, setuid, setgid, sticky
  std::uint32_t uid = 0;
  std::uint32_t gid = 0;
  std::int64_t mtime = 0; // seconds since the epoch; never taken from the host clock
};

struct entry {
  std::string path; // relative to the image root, canonical ("usr/bin/env")
  file_type type = file_type::regular;
  attributes attrs;
  std::uint64_t size = 0;     // bytes of content that follow (regular files only)
  std::string symlink_target; // kept exactly as the image has it, absolute or not
  std::uint32_t rdev_major = 0;
  std::uint32_t rdev_minor = 0;
};

// Names that share one inode. Every member is added with the same `id` and the final `count`;
// the first member added carries the content, the others are added with size 0.
struct link_set {
  std::uint64_t id = 0; // chosen by the caller, unique per archive; 0 means "not linked"
  std::uint32_t count = 1;
};

inline entry directory_entry(std::string path, attributes attrs) {
  entry member;
  member.path = std::move(path);
  member.type = file_type::directory;
  member.attrs = attrs;
  return member;
}

inline entry file_entry(std::string path, std::uint64_t size, attributes attrs) {
  entry member;
  member.path = std::move(path);
  member.attrs = attrs;
  member.size = size;
  return member;
}

inline entry symlink_entry(std::string path, std::string target, attributes attrs) {
  entry member;
  member.path = std::move(path);
  member.type = file_type::symlink;
  member.attrs = attrs;
  member.symlink_target = std::move(target);
  return member;
}

inline attributes with_permissions(std::uint32_t permissions) {
  attributes attrs;
  attrs.permissions = permissions;
  return attrs;
}

} // namespace compactor::archive
