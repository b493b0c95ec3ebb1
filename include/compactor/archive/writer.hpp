// Writes an archive of a compile-time format (cpio newc, pax tar) with a run-time compression
// to a file descriptor. The bytes depend only on what is added and on the options: inode
// numbers are given in order, no host clock or host user enters the archive.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>

#include <fmt/format.h>

#include <compactor/archive/compression.hpp>
#include <compactor/archive/detail/libarchive.hpp>
#include <compactor/archive/entry.hpp>
#include <compactor/archive/format.hpp>
#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::archive {

struct writer_options {
  compression_options compression;
};

template <typename Format>
class writer {
  static_assert(archive_format<Format>,
                "An archive format policy must provide `name`, a static `select(archive*)` "
                "that picks the libarchive format, and `hard_links` (by_inode or by_name); "
                "see compactor/archive/format.hpp for cpio_newc and tar_pax.");

public:
  // Writes to `fd`, which stays open and owned by the caller.
  writer(int fd, writer_options options = {}) : fd_(fd), handle_(archive_write_new()) {
    if (!handle_) {
      throw error("archive_write_new: out of memory");
    }
    auto* handle = handle_.get();
    Format::select(handle);
    detail::add_compression(handle, options.compression);
    // Whole blocks of a fixed size, but no zero padding after the last byte: padding after a
    // compressed stream makes `gzip -t` and friends complain about trailing garbage.
    detail::check(handle, archive_write_set_bytes_per_block(handle, 64 * 1024),
                  "archive_write_set_bytes_per_block");
    detail::check(handle, archive_write_set_bytes_in_last_block(handle, 1),
                  "archive_write_set_bytes_in_last_block");
    detail::check(handle, archive_write_open(handle, this, nullptr, &writer::write_callback,
                                             nullptr),
                  "archive_write_open");
  }

  writer(const writer&) = delete;
  writer& operator=(const writer&) = delete;

  // --- Whole entries -------------------------------------------------------------------------

  void add_directory(std::string_view path, attributes attrs = with_permissions(0755)) {
    add(directory_entry(std::string(path), attrs));
  }

  void add_symlink(std::string_view path, std::string_view target,
                   attributes attrs = with_permissions(0777)) {
    add(symlink_entry(std::string(path), std::string(target), attrs));
  }

  void add_file(std::string_view path, std::span<const std::byte> content,
                attributes attrs = {}) {
    begin(file_entry(std::string(path), content.size(), attrs));
    write(content);
  }

  void add_file(std::string_view path, std::string_view content, attributes attrs = {}) {
    add_file(path, std::as_bytes(std::span(content.data(), content.size())), attrs);
  }

  // Streams a host file into the archive under `path`; its size is taken when it is opened,
  // its metadata from `attrs` only.
  void add_file_from_host(std::string_view path, const std::filesystem::path& host,
                          attributes attrs = {}) {
    const unique_fd file(check_syscall(::open(host.c_str(), O_RDONLY | O_CLOEXEC),
                                       "open " + host.string()));
    struct stat status {};
    check_syscall(::fstat(file.get(), &status), "fstat " + host.string());
    if (!S_ISREG(status.st_mode)) {
      throw error(fmt::format("{} is not a regular file", host.string()));
    }
    begin(file_entry(std::string(path), static_cast<std::uint64_t>(status.st_size), attrs));

    std::array<std::byte, 64 * 1024> buffer{};
    std::uint64_t left = static_cast<std::uint64_t>(status.st_size);
    while (left > 0) {
      const auto got = ::read(file.get(), buffer.data(), buffer.size());
      if (got < 0 && errno == EINTR) {
        continue;
      }
      check_syscall(got, "read " + host.string());
      if (got == 0) {
        throw error(fmt::format("{} shrank while it was being archived", host.string()));
      }
      const auto used = std::min<std::uint64_t>(left, static_cast<std::uint64_t>(got));
      write(std::span(buffer.data(), static_cast<std::size_t>(used)));
      left -= used;
    }
  }

  // Any entry without content: a directory, a symlink, a fifo, a device, an empty file.
  void add(const entry& member, link_set link = {}) {
    begin(member, link);
    if (member.type == file_type::regular && member.size != 0) {
      throw error(fmt::format("{}: a file with content is added with begin() and write()",
                              member.path));
    }
  }

  // --- Streaming -----------------------------------------------------------------------------

  // Starts `member`; exactly `member.size` bytes must follow through write(). A member of a
  // link set after the first is written with size 0 and shares the first one's content.
  void begin(const entry& member, link_set link = {}) {
    finish_data();
    auto* handle = handle_.get();
    archive_entry_clear(entry_.get());
    auto* item = entry_.get();

    archive_entry_copy_pathname(item, member.path.c_str());
    archive_entry_set_mode(item, type_bits(member.type) | (member.attrs.permissions & 07777));
    archive_entry_set_uid(item, member.attrs.uid);
    archive_entry_set_gid(item, member.attrs.gid);
    archive_entry_set_mtime(item, member.attrs.mtime, 0);
    archive_entry_set_size(item, member.type == file_type::regular
                                     ? static_cast<la_int64_t>(member.size)
                                     : 0);
    if (member.type == file_type::symlink) {
      archive_entry_copy_symlink(item, member.symlink_target.c_str());
    }
    if (member.type == file_type::character_device || member.type == file_type::block_device) {
      archive_entry_set_rdevmajor(item, member.rdev_major);
      archive_entry_set_rdevminor(item, member.rdev_minor);
    }
    const bool new_inode = number(item, member, link);
    if (new_inode) {
      ++inodes_written_;
      if (member.type == file_type::regular) {
        constexpr std::uint64_t page = 4096;
        page_bytes_ += (member.size + page - 1) / page * page;
      }
    }

    detail::check(handle, archive_write_header(handle, item),
                  fmt::format("archive_write_header({})", member.path));
    data_left_ = member.type == file_type::regular ? member.size : 0;
    current_path_ = member.path;
    ++entries_;
  }

  void write(std::span<const std::byte> data) {
    if (data.size() > data_left_) {
      throw error(fmt::format("{}: more content than the {} bytes announced", current_path_,
                              data_left_ + 0));
    }
    while (!data.empty()) {
      const auto wrote = archive_write_data(handle_.get(), data.data(), data.size());
      if (wrote < 0) {
        throw error(detail::describe(handle_.get(), "archive_write_data(" + current_path_ + ")"));
      }
      data = data.subspan(static_cast<std::size_t>(wrote));
      data_left_ -= static_cast<std::uint64_t>(wrote);
    }
  }

  // Writes the trailer and flushes the compressor; the descriptor then holds the whole
  // archive. Nothing may be added afterwards.
  void finish() {
    finish_data();
    detail::check(handle_.get(), archive_write_close(handle_.get()), "archive_write_close");
  }

  [[nodiscard]] std::uint64_t entries() const noexcept { return entries_; }
  [[nodiscard]] std::uint64_t bytes_written() const noexcept { return bytes_written_; }

  // Members that are a file of their own, not one more name of a linked file; a path written
  // twice (a directory's placeholder and its entry) counts twice.
  [[nodiscard]] std::uint64_t inodes_written() const noexcept { return inodes_written_; }

  // The content of those files, each rounded up to whole 4 KiB pages: what it takes in the
  // page cache once a kernel has unpacked it.
  [[nodiscard]] std::uint64_t page_bytes() const noexcept { return page_bytes_; }

  // The archive's size before compression; after finish(), that of the whole archive.
  [[nodiscard]] std::uint64_t uncompressed_bytes() const noexcept {
    const auto bytes = archive_filter_bytes(handle_.get(), 0);
    return bytes > 0 ? static_cast<std::uint64_t>(bytes) : 0;
  }

private:
  static mode_t type_bits(file_type type) {
    switch (type) {
    case file_type::regular: return S_IFREG;
    case file_type::directory: return S_IFDIR;
    case file_type::symlink: return S_IFLNK;
    case file_type::fifo: return S_IFIFO;
    case file_type::character_device: return S_IFCHR;
    case file_type::block_device: return S_IFBLK;
    case file_type::socket: return S_IFSOCK;
    }
    return S_IFREG;
  }

  // cpio keeps inode numbers and link counts: they are given in the order entries arrive, and
  // the kernel links a name to an earlier one only when both share the inode and the count is
  // at least 2 (init/initramfs.c, maybe_link()). tar names the first member instead.
  // Returns whether the member is a new file rather than one more name of a linked one.
  bool number(::archive_entry* item, const entry& member, link_set link) {
    const bool linked = link.id != 0 && member.type != file_type::directory;
    if constexpr (Format::hard_links == hard_link_style::by_inode) {
      std::uint64_t inode = ++inodes_;
      bool first = true;
      if (linked) {
        const auto [slot, created] = link_inodes_.try_emplace(link.id, inode);
        inode = slot->second;
        first = created;
      }
      archive_entry_set_ino64(item, static_cast<la_int64_t>(inode));
      archive_entry_set_nlink(item, linked ? link.count : 1);
      archive_entry_set_dev(item, 0);
      return first;
    } else {
      if (linked) {
        const auto [slot, first] = link_names_.try_emplace(link.id, member.path);
        if (!first) {
          archive_entry_copy_hardlink(item, slot->second.c_str());
          archive_entry_set_size(item, 0);
        }
        return first;
      }
      return true;
    }
  }

  void finish_data() {
    if (data_left_ != 0) {
      throw error(fmt::format("{}: {} bytes of content are missing", current_path_,
                              data_left_ + 0));
    }
  }

  static la_ssize_t write_callback(::archive*, void* self, const void* data, size_t size) {
    auto* me = static_cast<writer*>(self);
    const auto* bytes = static_cast<const char*>(data);
    size_t left = size;
    while (left > 0) {
      const auto wrote = ::write(me->fd_, bytes, left);
      if (wrote < 0) {
        if (errno == EINTR) {
          continue;
        }
        archive_set_error(me->handle_.get(), errno, "write to the output: %s",
                          std::strerror(errno));
        return -1;
      }
      bytes += wrote;
      left -= static_cast<size_t>(wrote);
    }
    me->bytes_written_ += size;
    return static_cast<la_ssize_t>(size);
  }

  int fd_;
  detail::unique_write handle_;
  detail::unique_entry entry_{archive_entry_new()};
  std::uint64_t data_left_ = 0;
  std::string current_path_;
  std::uint64_t entries_ = 0;
  std::uint64_t bytes_written_ = 0;
  std::uint64_t inodes_ = 0;
  std::uint64_t inodes_written_ = 0;
  std::uint64_t page_bytes_ = 0;
  std::unordered_map<std::uint64_t, std::uint64_t> link_inodes_;
  std::unordered_map<std::uint64_t, std::string> link_names_;
};

} // namespace compactor::archive
