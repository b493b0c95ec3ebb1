// Owning handles for libarchive objects and the error text of a failed call.
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include <memory>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include <compactor/support/error.hpp>

namespace compactor::archive::detail {

struct write_deleter {
  void operator()(::archive* handle) const noexcept { archive_write_free(handle); }
};
struct read_deleter {
  void operator()(::archive* handle) const noexcept { archive_read_free(handle); }
};
struct entry_deleter {
  void operator()(::archive_entry* handle) const noexcept { archive_entry_free(handle); }
};

using unique_write = std::unique_ptr<::archive, write_deleter>;
using unique_read = std::unique_ptr<::archive, read_deleter>;
using unique_entry = std::unique_ptr<::archive_entry, entry_deleter>;

inline std::string describe(::archive* handle, std::string_view call) {
  const char* text = archive_error_string(handle);
  return fmt::format("{}: {}", call, text != nullptr ? text : "unknown libarchive error");
}

// libarchive reports warnings (ARCHIVE_WARN) for conditions it recovered from; only failures
// stop the work.
inline void check(::archive* handle, int status, std::string_view call) {
  if (status < ARCHIVE_WARN) {
    throw error(describe(handle, call));
  }
}

} // namespace compactor::archive::detail
