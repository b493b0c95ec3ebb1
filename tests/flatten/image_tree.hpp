// Test helpers: layer tars built with libarchive, and an archive read back into a tree the way
// the kernel's initramfs unpacker would build it.
#pragma once

#include <archive.h>
#include <archive_entry.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <compactor/image/layer.hpp>

namespace compactor::testing {

// --- Layers -----------------------------------------------------------------------------------

struct tar_item {
  std::string name;
  mode_t mode = 0; // type and permissions
  std::string content{}; // regular files
  std::string link{};    // symlink target, or hard-link target when `hard` is set
  bool hard = false;
  std::uint32_t uid = 0, gid = 0;
  std::int64_t mtime = 1'600'000'000;
  unsigned rdev_major = 0, rdev_minor = 0;
};

inline tar_item file(std::string name, std::string content, mode_t perm = 0644) {
  return {.name = std::move(name), .mode = S_IFREG | perm, .content = std::move(content)};
}
inline tar_item dir(std::string name, mode_t perm = 0755) {
  return {.name = std::move(name), .mode = S_IFDIR | perm};
}
inline tar_item soft_link(std::string name, std::string target) {
  return {.name = std::move(name), .mode = S_IFLNK | 0777, .link = std::move(target)};
}
inline tar_item hardlink(std::string name, std::string target) {
  return {.name = std::move(name), .mode = S_IFREG | 0644, .link = std::move(target),
          .hard = true};
}
inline tar_item whiteout(std::string name) { return file(std::move(name), "", 0644); }

enum class layer_compression { none, gzip, zstd };

inline std::vector<std::byte> make_tar(const std::vector<tar_item>& items,
                                       layer_compression compression) {
  std::vector<std::byte> out;
  std::unique_ptr<::archive, decltype(&archive_write_free)> a(archive_write_new(),
                                                             archive_write_free);
  archive_write_set_format_pax_restricted(a.get());
  switch (compression) {
  case layer_compression::none: archive_write_add_filter_none(a.get()); break;
  case layer_compression::gzip: archive_write_add_filter_gzip(a.get()); break;
  case layer_compression::zstd: archive_write_add_filter_zstd(a.get()); break;
  }
  archive_write_set_bytes_in_last_block(a.get(), 1);
  const auto write = [](::archive*, void* self, const void* data, size_t size) -> la_ssize_t {
    auto* buffer = static_cast<std::vector<std::byte>*>(self);
    const auto* bytes = static_cast<const std::byte*>(data);
    buffer->insert(buffer->end(), bytes, bytes + size);
    return static_cast<la_ssize_t>(size);
  };
  if (archive_write_open(a.get(), &out, nullptr, write, nullptr) != ARCHIVE_OK) {
    throw std::runtime_error(archive_error_string(a.get()));
  }
  for (const auto& item : items) {
    std::unique_ptr<::archive_entry, decltype(&archive_entry_free)> e(archive_entry_new(),
                                                                     archive_entry_free);
    archive_entry_copy_pathname(e.get(), item.name.c_str());
    archive_entry_set_mode(e.get(), item.mode);
    archive_entry_set_uid(e.get(), item.uid);
    archive_entry_set_gid(e.get(), item.gid);
    archive_entry_set_mtime(e.get(), item.mtime, 0);
    if (item.hard) {
      archive_entry_copy_hardlink(e.get(), item.link.c_str());
      archive_entry_set_size(e.get(), 0);
    } else if (S_ISLNK(item.mode)) {
      archive_entry_copy_symlink(e.get(), item.link.c_str());
    } else if (S_ISREG(item.mode)) {
      archive_entry_set_size(e.get(), static_cast<la_int64_t>(item.content.size()));
    }
    if (S_ISCHR(item.mode) || S_ISBLK(item.mode)) {
      archive_entry_set_rdevmajor(e.get(), item.rdev_major);
      archive_entry_set_rdevminor(e.get(), item.rdev_minor);
    }
    if (archive_write_header(a.get(), e.get()) < ARCHIVE_WARN) {
      throw std::runtime_error(archive_error_string(a.get()));
    }
    if (S_ISREG(item.mode) && !item.hard && !item.content.empty()) {
      archive_write_data(a.get(), item.content.data(), item.content.size());
    }
  }
  archive_write_close(a.get());
  return out;
}

// A layer served from memory in small pieces, like a network stream.
inline image::layer memory_layer(std::string digest, std::vector<std::byte> blob) {
  auto shared = std::make_shared<const std::vector<std::byte>>(std::move(blob));
  image::layer layer;
  layer.digest = std::move(digest);
  layer.size = shared->size();
  layer.open = [shared]() -> image::byte_reader {
    auto position = std::make_shared<std::size_t>(0);
    return [shared, position](std::span<std::byte> buffer) -> std::size_t {
      const auto n = std::min<std::size_t>({buffer.size(), shared->size() - *position, 7777});
      std::copy_n(shared->data() + *position, n, buffer.data());
      *position += n;
      return n;
    };
  };
  return layer;
}

// --- Trees --------------------------------------------------------------------------------------

struct inode {
  mode_t mode = 0;
  std::uint32_t uid = 0, gid = 0;
  std::int64_t mtime = 0;
  std::string content; // file content or symlink target
  unsigned rdev_major = 0, rdev_minor = 0;
};

struct tree {
  std::map<std::string, std::shared_ptr<inode>> paths;
  std::vector<std::string> problems; // entries the kernel would not have created

  [[nodiscard]] const inode& at(const std::string& path) const {
    const auto found = paths.find(path);
    if (found == paths.end()) {
      throw std::runtime_error("no " + path + " in the tree");
    }
    return *found->second;
  }
  [[nodiscard]] bool has(const std::string& path) const { return paths.contains(path); }
};

inline std::string parent_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? std::string() : path.substr(0, slash);
}

// Reads an archive (any format, any compression) and applies its entries in order like
// init/initramfs.c does: a repeated directory gets the new owner and mode, a repeated file of
// the same type is rewritten in place (its other names see the change), a hard link shares the
// inode, and an entry whose directory does not exist yet is a problem.
inline tree read_tree(std::span<const std::byte> bytes) {
  tree result;
  std::unique_ptr<::archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_filter_all(a.get());
  archive_read_support_format_all(a.get());
  if (archive_read_open_memory(a.get(), bytes.data(), bytes.size()) != ARCHIVE_OK) {
    throw std::runtime_error(archive_error_string(a.get()));
  }
  ::archive_entry* e = nullptr;
  for (;;) {
    const int status = archive_read_next_header(a.get(), &e);
    if (status == ARCHIVE_EOF) {
      break;
    }
    if (status < ARCHIVE_WARN) {
      throw std::runtime_error(archive_error_string(a.get()));
    }
    const char* raw = archive_entry_pathname(e);
    std::string path = raw != nullptr ? raw : archive_entry_pathname_utf8(e);
    while (path.size() > 1 && path.back() == '/') {
      path.pop_back(); // tar writes directories as "name/"
    }
    if (path == "." || path.empty()) {
      continue;
    }
    const auto parent = parent_of(path);
    if (!parent.empty() && (!result.has(parent) || !S_ISDIR(result.at(parent).mode))) {
      result.problems.push_back(path + " comes before its directory");
    }

    std::string content;
    std::vector<char> buffer(65536);
    for (la_ssize_t n; (n = archive_read_data(a.get(), buffer.data(), buffer.size())) > 0;) {
      content.append(buffer.data(), static_cast<std::size_t>(n));
    }

    if (const char* link = archive_entry_hardlink(e)) {
      if (!result.has(link)) {
        result.problems.push_back(path + " links to missing " + link);
        continue;
      }
      auto target = result.paths.at(link);
      if (!content.empty()) {
        target->content = content;
      }
      result.paths[path] = target;
      continue;
    }

    const mode_t mode = archive_entry_mode(e);
    auto& slot = result.paths[path];
    if (!slot || ((slot->mode ^ mode) & S_IFMT) != 0) {
      slot = std::make_shared<inode>();
    }
    slot->mode = mode;
    slot->uid = static_cast<std::uint32_t>(archive_entry_uid(e));
    slot->gid = static_cast<std::uint32_t>(archive_entry_gid(e));
    slot->mtime = archive_entry_mtime(e);
    slot->rdev_major = archive_entry_rdevmajor(e);
    slot->rdev_minor = archive_entry_rdevminor(e);
    if (S_ISLNK(mode)) {
      const char* target = archive_entry_symlink(e);
      slot->content = target != nullptr ? target : archive_entry_symlink_utf8(e);
    } else if (S_ISREG(mode)) {
      slot->content = content;
    }
  }
  return result;
}

// Reads a directory tree from disk (an unpacked reference image) the same way.
inline tree read_directory(const std::filesystem::path& root) {
  tree result;
  std::map<std::pair<dev_t, ino_t>, std::shared_ptr<inode>> inodes;
  for (auto it = std::filesystem::recursive_directory_iterator(root);
       it != std::filesystem::recursive_directory_iterator(); ++it) {
    const auto path = it->path().lexically_relative(root).string();
    struct stat st {};
    if (::lstat(it->path().c_str(), &st) != 0) {
      throw std::runtime_error("lstat " + it->path().string());
    }
    auto& shared = inodes[{st.st_dev, st.st_ino}];
    if (!shared || S_ISDIR(st.st_mode)) {
      shared = std::make_shared<inode>();
      shared->mode = st.st_mode;
      shared->uid = st.st_uid;
      shared->gid = st.st_gid;
      shared->mtime = st.st_mtime;
      shared->rdev_major = major(st.st_rdev);
      shared->rdev_minor = minor(st.st_rdev);
      if (S_ISLNK(st.st_mode)) {
        shared->content = std::filesystem::read_symlink(it->path()).string();
      } else if (S_ISREG(st.st_mode)) {
        std::FILE* f = std::fopen(it->path().c_str(), "rb");
        std::vector<char> buffer(65536);
        for (std::size_t n; (n = std::fread(buffer.data(), 1, buffer.size(), f)) > 0;) {
          shared->content.append(buffer.data(), n);
        }
        std::fclose(f);
      }
    }
    result.paths[path] = shared;
  }
  return result;
}

} // namespace compactor::testing
