// Archive formats as compile-time policies of archive::writer.
#pragma once

#include <archive.h>

#include <concepts>
#include <string_view>

#include <compactor/archive/detail/libarchive.hpp>

namespace compactor::archive {

// How a format records that several names share one inode.
enum class hard_link_style {
  by_inode, // every member carries the same inode number and link count (cpio newc)
  by_name,  // later members name the first one (tar)
};

// A format policy names itself, selects the libarchive format on a write handle, and says how
// it records hard links.
template <typename Format>
concept archive_format = requires(::archive* handle) {
  { Format::name } -> std::convertible_to<std::string_view>;
  { Format::select(handle) } -> std::same_as<void>;
  { Format::hard_links } -> std::convertible_to<hard_link_style>;
};

// SVR4 "new ASCII" cpio without checksums: the format the kernel's initramfs unpacker reads
// (Documentation/driver-api/early-userspace/buffer-format.rst).
struct cpio_newc {
  static constexpr std::string_view name = "cpio newc";
  static constexpr hard_link_style hard_links = hard_link_style::by_inode;
  static void select(::archive* handle) {
    detail::check(handle, archive_write_set_format_cpio_newc(handle),
                  "archive_write_set_format_cpio_newc");
  }
};

// POSIX pax tar, for looking at an image with ordinary tools.
struct tar_pax {
  static constexpr std::string_view name = "pax tar";
  static constexpr hard_link_style hard_links = hard_link_style::by_name;
  static void select(::archive* handle) {
    // "restricted" pax writes an extended header only where ustar cannot hold a field, so no
    // host-specific attribute (atime, ctime, device and inode numbers) enters the archive.
    detail::check(handle, archive_write_set_format_pax_restricted(handle),
                  "archive_write_set_format_pax_restricted");
  }
};

static_assert(archive_format<cpio_newc>);
static_assert(archive_format<tar_pax>);

} // namespace compactor::archive
