// A content-addressed cache of blobs under $XDG_CACHE_HOME/compactor (~/.cache/compactor).
//
// A blob is written to a temporary file beside its final place and renamed to
// blobs/sha256/<hex> only once its size and digest are verified, so a name in the cache always
// promises its content. Each entry is hashed again the first time a blob_cache object hands
// it out; one that no longer matches (a disk error, an edit by hand, a crash before the data
// reached the disk) is removed and reported as missing, so the caller fetches it again.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cstdlib>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <system_error>

#include <fmt/format.h>

#include <compactor/image/digest.hpp>
#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::image {

class blob_cache;

// A blob being written into the cache; abandoned (its temporary file removed) unless
// committed.
class blob_writer {
public:
  blob_writer(blob_writer&&) = default;
  blob_writer& operator=(blob_writer&&) = default;
  ~blob_writer() {
    if (fd_) {
      std::error_code ignored;
      std::filesystem::remove(temporary_, ignored);
    }
  }

  void write(std::string_view chunk) {
    hash_.update(chunk);
    while (!chunk.empty()) {
      const ssize_t written = ::write(fd_.get(), chunk.data(), chunk.size());
      if (written < 0 && errno == EINTR) {
        continue;
      }
      if (written < 0) {
        throw_errno(fmt::format("write {}", temporary_.string()));
      }
      chunk.remove_prefix(static_cast<std::size_t>(written));
    }
  }

  [[nodiscard]] std::uint64_t size() const noexcept { return hash_.size(); }

  // Verifies the content against `digest` and `size` (either may be empty / -1 to take the
  // content's own) and moves it to its place. Returns the content's digest.
  std::string commit(std::string_view digest = {}, std::int64_t size = -1);

private:
  friend class blob_cache;
  blob_writer(const blob_cache& cache, std::filesystem::path temporary, unique_fd fd,
              std::string what)
      : cache_(&cache), temporary_(std::move(temporary)), fd_(std::move(fd)),
        what_(std::move(what)) {}

  const blob_cache* cache_;
  std::filesystem::path temporary_;
  unique_fd fd_;
  std::string what_;
  sha256 hash_;
};

class blob_cache {
public:
  explicit blob_cache(std::filesystem::path root) : root_(std::move(root)) {}

  // $XDG_CACHE_HOME/compactor, or ~/.cache/compactor.
  static std::filesystem::path default_root() {
    if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg != nullptr && *xdg == '/') {
      return std::filesystem::path(xdg) / "compactor";
    }
    const char* home = std::getenv("HOME");
    if (home == nullptr || *home == '\0') {
      throw compactor::error("cannot place the blob cache: neither XDG_CACHE_HOME nor HOME is "
                             "set");
    }
    return std::filesystem::path(home) / ".cache" / "compactor";
  }

  [[nodiscard]] const std::filesystem::path& root() const noexcept { return root_; }

  [[nodiscard]] std::filesystem::path path_of(std::string_view digest) const {
    require_sha256(digest, "a cached blob");
    return root_ / "blobs" / "sha256" / std::string(digest_hex(digest));
  }

  // The path of a verified entry, or nothing when it is absent or was corrupt (then it is
  // removed so that it is fetched again). `size` -1 accepts any size.
  std::optional<std::filesystem::path> find(std::string_view digest, std::int64_t size = -1) {
    const auto path = path_of(digest);
    std::error_code error;
    const auto actual_size = std::filesystem::file_size(path, error);
    if (error) {
      return std::nullopt;
    }
    {
      const std::lock_guard lock(mutex_);
      if (verified_.contains(std::string(digest)) &&
          (size < 0 || actual_size == static_cast<std::uint64_t>(size))) {
        return path;
      }
    }
    bool good = size < 0 || actual_size == static_cast<std::uint64_t>(size);
    if (good) {
      try {
        const auto reader =
            verifying_reader(file_reader(path), std::string(digest), size, "cached blob");
        std::array<std::byte, 1 << 16> buffer{};
        while (reader(buffer) != 0) {
        }
      } catch (const verification_error&) {
        good = false;
      }
    }
    if (!good) {
      std::filesystem::remove(path, error);
      return std::nullopt;
    }
    const std::lock_guard lock(mutex_);
    verified_.insert(std::string(digest));
    return path;
  }

  // Starts writing a blob; `what` names it in error messages ("layer", "config").
  blob_writer begin(std::string what = "blob") const {
    const auto directory = root_ / "tmp";
    std::filesystem::create_directories(directory);
    std::string name = (directory / "blob-XXXXXX").string();
    unique_fd fd(::mkostemp(name.data(), O_CLOEXEC));
    if (!fd) {
      throw_errno(fmt::format("mkostemp {}", name));
    }
    return blob_writer(*this, name, std::move(fd), std::move(what));
  }

  // Stores bytes held in memory after checking them; returns the entry's path.
  std::filesystem::path store(std::string_view bytes, std::string_view digest,
                              std::int64_t size = -1, std::string what = "blob") {
    auto writer = begin(std::move(what));
    writer.write(bytes);
    return path_of(writer.commit(digest, size));
  }

  void mark_verified(std::string_view digest) const {
    const std::lock_guard lock(mutex_);
    verified_.insert(std::string(digest));
  }

private:
  std::filesystem::path root_;
  mutable std::mutex mutex_;
  mutable std::set<std::string> verified_;
};

inline std::string blob_writer::commit(std::string_view digest, std::int64_t size) {
  const auto actual = hash_.finish();
  const auto written = hash_.size();
  // No fsync: an entry that a crash left short or empty fails the check on its next use and
  // is fetched again.
  fd_.reset();
  const auto discard = [&] {
    std::error_code ignored;
    std::filesystem::remove(temporary_, ignored);
  };
  if (size >= 0 && written != static_cast<std::uint64_t>(size)) {
    discard();
    throw verification_error(
        fmt::format("{} {} has {} bytes but its descriptor says {}", what_, digest, written, size));
  }
  if (!digest.empty() && actual != digest) {
    discard();
    throw verification_error(
        fmt::format("{} does not match its digest: expected {}, got {}", what_, digest, actual));
  }
  const auto target = cache_->path_of(actual);
  std::filesystem::create_directories(target.parent_path());
  std::error_code error;
  std::filesystem::rename(temporary_, target, error);
  if (error) {
    discard();
    throw std::system_error(error,
                            fmt::format("rename {} to {}", temporary_.string(), target.string()));
  }
  cache_->mark_verified(actual);
  return actual;
}

} // namespace compactor::image
