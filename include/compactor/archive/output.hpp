// Where an archive goes: a path that is replaced only once the archive is complete, or a file
// descriptor that the caller owns.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::archive {

// Writes to a temporary file beside `target`; commit() gives it the target's name with one
// rename(2). Destroyed without commit() (an exception, an early return), it removes the
// temporary file, so no half-written archive is ever left under either name.
class atomic_output {
public:
  explicit atomic_output(std::filesystem::path target, mode_t permissions = 0644)
      : target_(std::move(target)) {
    const auto directory = target_.has_parent_path() ? target_.parent_path()
                                                     : std::filesystem::path(".");
    auto pattern = (directory / ("." + target_.filename().string() + ".partial-XXXXXX")).string();
    std::vector<char> name(pattern.begin(), pattern.end());
    name.push_back('\0');
    fd_.reset(check_syscall(::mkostemp(name.data(), O_CLOEXEC), "mkostemp " + pattern));
    temporary_ = name.data();
    if (::fchmod(fd_.get(), permissions) != 0) {
      const int saved = errno;
      ::unlink(temporary_.c_str());
      throw_errno(saved, "fchmod " + temporary_.string());
    }
  }

  atomic_output(const atomic_output&) = delete;
  atomic_output& operator=(const atomic_output&) = delete;

  ~atomic_output() {
    if (!committed_) {
      ::unlink(temporary_.c_str());
    }
  }

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] const std::filesystem::path& target() const noexcept { return target_; }

  // Makes the archive visible under its name. With `durable`, its bytes reach the disk first,
  // so that a power loss cannot leave an empty file under the target name.
  void commit(bool durable = false) {
    if (durable) {
      check_syscall(::fsync(fd_.get()), "fsync " + temporary_.string());
    }
    fd_.reset();
    check_syscall(::rename(temporary_.c_str(), target_.c_str()),
                  "rename " + temporary_.string() + " to " + target_.string());
    committed_ = true;
  }

private:
  std::filesystem::path target_;
  std::filesystem::path temporary_;
  unique_fd fd_;
  bool committed_ = false;
};

} // namespace compactor::archive
