// A disk image as a plain file, the storage behind virtio-blk.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::backends {

class raw_file {
public:
  raw_file(const std::filesystem::path& path, bool read_only)
      : read_only_(read_only), id_(path.filename().string()) {
    file_.reset(::open(path.c_str(), (read_only ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!file_) {
      throw_errno("open " + path.string());
    }
    struct stat status {};
    check_syscall(::fstat(file_.get(), &status), "fstat " + path.string());
    if (!S_ISREG(status.st_mode) && !S_ISBLK(status.st_mode)) {
      throw compactor::error(path.string() + " is not a regular file or a block device");
    }
    size_ = static_cast<std::uint64_t>(::lseek(file_.get(), 0, SEEK_END));
  }

  [[nodiscard]] std::uint64_t size_bytes() const noexcept { return size_; }
  [[nodiscard]] bool read_only() const noexcept { return read_only_; }
  // A name for the guest (virtio-blk GET_ID): the file's name.
  [[nodiscard]] const std::string& id() const noexcept { return id_; }

  // Each returns false on a host I/O error (including a short transfer), which the device turns
  // into VIRTIO_BLK_S_IOERR; the errno is kept for the log.
  bool read(std::uint64_t offset, const std::vector<iovec>& buffers) {
    return transfer(offset, buffers, false);
  }

  bool write(std::uint64_t offset, const std::vector<iovec>& buffers) {
    return !read_only_ && transfer(offset, buffers, true);
  }

  bool flush() { return ::fdatasync(file_.get()) == 0; }

private:
  bool transfer(std::uint64_t offset, std::vector<iovec> buffers, bool writing) {
    std::size_t first = 0;
    while (first < buffers.size()) {
      const int count = static_cast<int>(std::min<std::size_t>(buffers.size() - first, IOV_MAX));
      const ssize_t done =
          writing ? ::pwritev(file_.get(), &buffers[first], count, static_cast<off_t>(offset))
                  : ::preadv(file_.get(), &buffers[first], count, static_cast<off_t>(offset));
      if (done < 0 && errno == EINTR) {
        continue;
      }
      if (done <= 0) {
        return false;
      }
      offset += static_cast<std::uint64_t>(done);
      // Skip what was transferred, partially finished buffer included.
      auto remaining = static_cast<std::size_t>(done);
      while (first < buffers.size() && remaining >= buffers[first].iov_len) {
        remaining -= buffers[first].iov_len;
        ++first;
      }
      if (remaining > 0) {
        buffers[first].iov_base = static_cast<char*>(buffers[first].iov_base) + remaining;
        buffers[first].iov_len -= remaining;
      }
    }
    return true;
  }

  unique_fd file_;
  std::uint64_t size_ = 0;
  bool read_only_;
  std::string id_;
};

} // namespace compactor::backends
