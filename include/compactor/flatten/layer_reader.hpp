// Reads the entries of one layer blob through libarchive, which recognises gzip, zstd or no
// compression by itself. Bytes come from the layer's byte_reader and are read exactly once.
#pragma once

#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <compactor/archive/detail/libarchive.hpp>
#include <compactor/image/layer.hpp>
#include <compactor/support/error.hpp>

namespace compactor::flatten {

class layer_reader {
public:
  explicit layer_reader(const image::layer& layer)
      : digest_(layer.digest), source_(layer.open()), handle_(archive_read_new()),
        buffer_(1024 * 1024) {
    if (!handle_) {
      throw error("archive_read_new: out of memory");
    }
    auto* handle = handle_.get();
    check(archive_read_support_filter_all(handle), "archive_read_support_filter_all");
    check(archive_read_support_format_tar(handle), "archive_read_support_format_tar");
    // A layer may be an empty tar stream or no bytes at all.
    check(archive_read_support_format_empty(handle), "archive_read_support_format_empty");
    check(archive_read_open(handle, this, nullptr, &layer_reader::read_callback, nullptr),
          "archive_read_open");
  }

  layer_reader(const layer_reader&) = delete;
  layer_reader& operator=(const layer_reader&) = delete;

  // The next entry, or nullptr at the end of the layer.
  ::archive_entry* next() {
    ::archive_entry* item = nullptr;
    const int status = archive_read_next_header(handle_.get(), &item);
    if (status == ARCHIVE_EOF) {
      return nullptr;
    }
    check(status, "archive_read_next_header");
    return item;
  }

  // Calls `sink(span)` for the content of the current entry in order, holes of a sparse entry
  // included as zeros.
  template <typename Sink>
  void read_data(Sink&& sink) {
    static constexpr std::byte zeros[64 * 1024] = {};
    std::int64_t position = 0;
    for (;;) {
      const void* block = nullptr;
      size_t size = 0;
      la_int64_t offset = 0;
      const int status = archive_read_data_block(handle_.get(), &block, &size, &offset);
      if (status == ARCHIVE_EOF) {
        return;
      }
      check(status, "archive_read_data_block");
      while (position < offset) {
        const auto gap = std::min<std::int64_t>(offset - position, sizeof zeros);
        sink(std::span<const std::byte>(zeros, static_cast<std::size_t>(gap)));
        position += gap;
      }
      sink(std::span(static_cast<const std::byte*>(block), size));
      position += static_cast<std::int64_t>(size);
    }
  }

  // Reads whatever follows the end of the tar stream (padding, or bytes libarchive did not
  // need), so that the source can check the blob's size and digest.
  void drain() {
    while (!source_done_) {
      if (source_(std::span(buffer_)) == 0) {
        source_done_ = true;
      }
    }
  }

  [[nodiscard]] const std::string& digest() const noexcept { return digest_; }

  // Bytes of the tar stream decompressed so far (read ahead of the current entry included).
  [[nodiscard]] std::uint64_t uncompressed_bytes() const noexcept {
    const auto bytes = archive_filter_bytes(handle_.get(), 0);
    return bytes > 0 ? static_cast<std::uint64_t>(bytes) : 0;
  }

  // Throws for a failed libarchive call: the byte source's own exception when it was the
  // cause, otherwise libarchive's text with the layer's digest.
  void check(int status, std::string_view call) const {
    if (status < ARCHIVE_WARN) {
      if (failure_) {
        std::rethrow_exception(failure_);
      }
      throw error(fmt::format("layer {}: {}", digest_,
                              archive::detail::describe(handle_.get(), call)));
    }
  }

private:
  static la_ssize_t read_callback(::archive* handle, void* self, const void** block) {
    auto* me = static_cast<layer_reader*>(self);
    try {
      const auto got = me->source_done_ ? 0 : me->source_(std::span(me->buffer_));
      me->source_done_ = got == 0;
      *block = me->buffer_.data();
      return static_cast<la_ssize_t>(got);
    } catch (...) {
      // libarchive is C: the failure is kept and thrown again once control is back here.
      me->failure_ = std::current_exception();
      archive_set_error(handle, EIO, "reading the layer failed");
      return -1;
    }
  }

  std::string digest_;
  image::byte_reader source_;
  archive::detail::unique_read handle_;
  std::vector<std::byte> buffer_;
  bool source_done_ = false;
  std::exception_ptr failure_;
};

} // namespace compactor::flatten
