// An unlinked temporary file (O_TMPFILE) that keeps the content of one layer's regular files,
// so that a hard link met later in the same layer can still be given its target's bytes
// without reading the layer a second time. It never has a name, so nothing is left behind.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <utility>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::flatten::detail {

class spool {
public:
  explicit spool(std::filesystem::path directory) : directory_(std::move(directory)) {}

  // The offset at which the next append() starts.
  std::uint64_t begin() {
    open_once();
    return size_;
  }

  void append(std::span<const std::byte> data) {
    while (!data.empty()) {
      const auto wrote = ::pwrite(fd_.get(), data.data(), data.size(),
                                  static_cast<off_t>(size_));
      if (wrote < 0 && errno == EINTR) {
        continue;
      }
      check_syscall(wrote, "pwrite to the hard-link spool in " + directory_.string());
      data = data.subspan(static_cast<std::size_t>(wrote));
      size_ += static_cast<std::uint64_t>(wrote);
    }
  }

  // Calls `sink(span)` with the `length` bytes kept at `offset`.
  template <typename Sink>
  void replay(std::uint64_t offset, std::uint64_t length, Sink&& sink) const {
    std::array<std::byte, 64 * 1024> buffer{};
    while (length > 0) {
      const auto want = static_cast<std::size_t>(std::min<std::uint64_t>(length, buffer.size()));
      const auto got = ::pread(fd_.get(), buffer.data(), want, static_cast<off_t>(offset));
      if (got < 0 && errno == EINTR) {
        continue;
      }
      check_syscall(got, "pread from the hard-link spool");
      if (got == 0) {
        throw error("the hard-link spool is shorter than what was written to it");
      }
      sink(std::span<const std::byte>(buffer.data(), static_cast<std::size_t>(got)));
      offset += static_cast<std::uint64_t>(got);
      length -= static_cast<std::uint64_t>(got);
    }
  }

  // Forgets the content of the layer just finished and gives its space back.
  void clear() {
    if (fd_ && size_ > 0) {
      check_syscall(::ftruncate(fd_.get(), 0), "ftruncate of the hard-link spool");
    }
    size_ = 0;
  }

  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }

private:
  void open_once() {
    if (fd_) {
      return;
    }
    fd_.reset(::open(directory_.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
    if (!fd_) {
      throw_errno(fmt::format("open(O_TMPFILE) in {} for the hard-link spool",
                              directory_.string()));
    }
  }

  std::filesystem::path directory_;
  unique_fd fd_;
  std::uint64_t size_ = 0;
};

} // namespace compactor::flatten::detail
