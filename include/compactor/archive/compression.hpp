// The compression of an archive, chosen at run time, and how libarchive is set up for it so
// that the Linux initramfs unpacker accepts the result and equal input gives equal bytes.
#pragma once

#include <archive.h>

#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/archive/detail/libarchive.hpp>
#include <compactor/support/error.hpp>

namespace compactor::archive {

enum class compression { none, gzip, zstd, lz4, xz };

inline std::string_view to_string(compression method) {
  switch (method) {
  case compression::none: return "none";
  case compression::gzip: return "gzip";
  case compression::zstd: return "zstd";
  case compression::lz4: return "lz4";
  case compression::xz: return "xz";
  }
  return "unknown";
}

inline std::optional<compression> compression_from_string(std::string_view name) {
  for (const auto method : {compression::none, compression::gzip, compression::zstd,
                            compression::lz4, compression::xz}) {
    if (name == to_string(method)) {
      return method;
    }
  }
  return std::nullopt;
}

struct compression_options {
  compression method = compression::zstd;
  int level = -1;           // -1: the method's default (gzip 6, zstd 3, lz4 9, xz 6)
  // 0: compress on the calling thread. Any count from 1 up gives the same bytes as any other
  // (zstd multi-threaded mode), but not the same bytes as 0.
  unsigned zstd_threads = 0;
};

namespace detail {

inline int level_or(const compression_options& options, int fallback) {
  return options.level >= 0 ? options.level : fallback;
}

inline void set_filter_option(::archive* handle, const char* filter, const char* key,
                              const std::string& value) {
  check(handle,
        archive_write_set_filter_option(handle, filter, key,
                                        value.empty() ? nullptr : value.c_str()),
        fmt::format("archive_write_set_filter_option({}:{})", filter, key));
}

inline void add_compression(::archive* handle, const compression_options& options) {
  switch (options.method) {
  case compression::none:
    check(handle, archive_write_add_filter_none(handle), "archive_write_add_filter_none");
    return;

  case compression::gzip:
    check(handle, archive_write_add_filter_gzip(handle), "archive_write_add_filter_gzip");
    set_filter_option(handle, "gzip", "compression-level",
                      std::to_string(level_or(options, 6)));
    // Without this libarchive stores the current time in the gzip header (RFC 1952, 2.3.1
    // MTIME); it never stores a file name for an archive written to a descriptor.
    set_filter_option(handle, "gzip", "timestamp", "");
    return;

  case compression::zstd:
    check(handle, archive_write_add_filter_zstd(handle), "archive_write_add_filter_zstd");
    set_filter_option(handle, "zstd", "compression-level",
                      std::to_string(level_or(options, 3)));
    if (options.zstd_threads > 0) {
      set_filter_option(handle, "zstd", "threads", std::to_string(options.zstd_threads));
    }
    return;

  // The kernel unpacks only the legacy lz4 format (lib/decompress_unlz4.c checks for magic
  // 0x184C2102) and only xz streams with a CRC32 or no check (lib/xz/xz_dec_stream.c);
  // libarchive 3.6 writes the lz4 frame format and xz with CRC64, so these two go through the
  // command-line compressors, which are deterministic when single-threaded.
  case compression::lz4:
    check(handle,
          archive_write_add_filter_program(
              handle, fmt::format("lz4 -l -q -{} -c", level_or(options, 9)).c_str()),
          "archive_write_add_filter_program(lz4)");
    return;

  case compression::xz:
    check(handle,
          archive_write_add_filter_program(
              handle,
              fmt::format("xz --check=crc32 -T1 -q -{} -c", level_or(options, 6)).c_str()),
          "archive_write_add_filter_program(xz)");
    return;
  }
  throw error("unknown compression method");
}

} // namespace detail
} // namespace compactor::archive
