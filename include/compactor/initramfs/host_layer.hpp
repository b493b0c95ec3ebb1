// What the host adds to an image: the guest init, its launch configuration and the files the
// user transfers. They form one more layer on top of the image's, so the flattener applies
// them with the same rules: they replace image files of the same path, keep the image's
// directories where those exist, and get parents created where they do not.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <compactor/archive/format.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/guest/launch_config.hpp>
#include <compactor/image/layer.hpp>
#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::initramfs {

// A host file or directory copied into the guest at an absolute path.
struct transfer {
  std::filesystem::path host;
  std::string guest;
};

namespace detail {

inline std::string relative_guest_path(const std::string& guest) {
  std::string path = guest;
  while (path.starts_with('/')) {
    path.erase(0, 1);
  }
  while (path.ends_with('/')) {
    path.pop_back();
  }
  return path;
}

inline archive::attributes host_attributes(const struct stat& status) {
  archive::attributes attrs;
  attrs.permissions = status.st_mode & 07777;
  attrs.mtime = status.st_mtime; // the file's own time, so the same files give the same bytes
  return attrs;                  // owned by root in the guest, whoever owns them here
}

// Adds `host` at `guest` and, for a directory, everything below it in name order.
template <typename Writer>
void add_host_tree(Writer& writer, const std::filesystem::path& host, const std::string& guest) {
  struct stat status {};
  if (::lstat(host.c_str(), &status) != 0) {
    throw_errno(fmt::format("--transfer-files: {}", host.string()));
  }
  const auto attrs = host_attributes(status);
  if (S_ISLNK(status.st_mode)) {
    writer.add_symlink(guest, std::filesystem::read_symlink(host).string(), attrs);
  } else if (S_ISREG(status.st_mode)) {
    writer.add_file_from_host(guest, host, attrs);
  } else if (S_ISDIR(status.st_mode)) {
    writer.add_directory(guest, attrs);
    std::vector<std::filesystem::path> children;
    for (const auto& child : std::filesystem::directory_iterator(host)) {
      children.push_back(child.path());
    }
    std::sort(children.begin(), children.end());
    for (const auto& child : children) {
      add_host_tree(writer, child, guest + "/" + child.filename().string());
    }
  } else {
    throw compactor::error(fmt::format("--transfer-files: {} is not a file, directory or "
                                       "symbolic link",
                                       host.string()));
  }
}

} // namespace detail

// The host layer as an uncompressed tar in an unnamed temporary file.
class host_layer {
public:
  // `resolv_conf`, when not empty, becomes /etc/resolv.conf.
  host_layer(std::span<const std::byte> init_binary, const guest::launch_config& launch,
             const std::vector<transfer>& transfers, const std::string& resolv_conf = {},
             const std::filesystem::path& temporary_directory =
                 std::filesystem::temp_directory_path()) {
    file_ = std::make_shared<unique_fd>(
        ::open(temporary_directory.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (!*file_) {
      throw_errno("open O_TMPFILE in " + temporary_directory.string());
    }

    archive::writer<archive::tar_pax> writer(file_->get());
    const auto init_dir = detail::relative_guest_path(
        std::filesystem::path(guest::init_path).parent_path().string());
    writer.add_directory(init_dir, archive::with_permissions(0755));
    writer.add_file(detail::relative_guest_path(guest::init_path), init_binary,
                    archive::with_permissions(0755));
    writer.add_file(detail::relative_guest_path(guest::launch_config_path),
                    guest::write_launch_config(launch), archive::with_permissions(0644));
    if (!resolv_conf.empty()) {
      writer.add_file("etc/resolv.conf", resolv_conf, archive::with_permissions(0644));
    }
    for (const auto& item : transfers) {
      const auto guest_path = detail::relative_guest_path(item.guest);
      if (guest_path.empty()) {
        throw compactor::error(
            fmt::format("--transfer-files: {} cannot replace the guest's root", item.guest));
      }
      detail::add_host_tree(writer, item.host, guest_path);
    }
    writer.finish();

    struct stat status {};
    check_syscall(::fstat(file_->get(), &status), "fstat host layer");
    size_ = static_cast<std::uint64_t>(status.st_size);
  }

  // The layer for the flattener; its reader reads the temporary file from the start.
  [[nodiscard]] image::layer as_layer() const {
    image::layer layer;
    layer.digest = "host-layer"; // named in errors; it never leaves this process
    layer.media_type = "application/vnd.oci.image.layer.v1.tar";
    layer.size = size_;
    layer.open = [file = file_]() -> image::byte_reader {
      auto offset = std::make_shared<off_t>(0);
      return [file, offset](std::span<std::byte> buffer) -> std::size_t {
        for (;;) {
          const ssize_t got = ::pread(file->get(), buffer.data(), buffer.size(), *offset);
          if (got < 0 && errno == EINTR) {
            continue;
          }
          if (got < 0) {
            throw_errno("read host layer");
          }
          *offset += got;
          return static_cast<std::size_t>(got);
        }
      };
    };
    return layer;
  }

private:
  std::shared_ptr<unique_fd> file_;
  std::uint64_t size_ = 0;
};

} // namespace compactor::initramfs
