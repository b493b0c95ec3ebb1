// The file systems a container expects, mounted where the image has not mounted them already.
#pragma once

#include <fcntl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>

#include <compactor/support/error.hpp>

namespace compactor::init {

namespace detail {

// A directory is a mount point when it lives on another device than its parent.
inline bool is_mount_point(const std::string& path) {
  struct stat self{};
  struct stat parent{};
  if (::stat(path.c_str(), &self) != 0 || ::stat((path + "/..").c_str(), &parent) != 0) {
    return false;
  }
  return self.st_dev != parent.st_dev;
}

inline bool is_missing_or_empty(const std::string& path) {
  std::error_code error;
  return !std::filesystem::exists(path, error) || std::filesystem::is_empty(path, error);
}

inline bool kernel_has_file_system(const std::string& type) {
  std::ifstream file("/proc/filesystems");
  for (std::string line; std::getline(file, line);) {
    if (line.ends_with("\t" + type)) {
      return true;
    }
  }
  return false;
}

inline void mount_once(const std::string& target, const char* type, unsigned long flags,
                       const char* options) {
  if (is_mount_point(target)) {
    return;
  }
  std::error_code error;
  std::filesystem::create_directories(target, error);
  if (error) {
    throw std::system_error(error, "mkdir " + target);
  }
  if (::mount(type, target.c_str(), type, flags, options) != 0) {
    throw_errno(std::string("mount ") + type + " on " + target);
  }
}

inline void symlink_if_missing(const char* target, const char* path) {
  struct stat existing{};
  if (::lstat(path, &existing) != 0 && ::symlink(target, path) != 0) {
    throw_errno(std::string("symlink ") + path);
  }
}

} // namespace detail

// /proc, /sys and /dev first: everything else, the console included, needs them.
inline void mount_kernel_file_systems() {
  constexpr auto hardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  detail::mount_once("/proc", "proc", hardened, nullptr);
  detail::mount_once("/sys", "sysfs", hardened, nullptr);
  detail::mount_once("/dev", "devtmpfs", MS_NOSUID, "mode=0755");
}

// The rest of what `docker run` provides. /tmp and /run are fresh tmpfs only where the image
// has nothing there: the initramfs is writable memory already, and an image's files stay
// visible. mqueue and cgroup2 are skipped on a kernel built without them.
inline void mount_container_file_systems() {
  constexpr auto hardened = MS_NOSUID | MS_NODEV | MS_NOEXEC;
  detail::mount_once("/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                     "newinstance,ptmxmode=0666,mode=0620,gid=5");
  detail::mount_once("/dev/shm", "tmpfs", hardened, "mode=1777");
  if (detail::kernel_has_file_system("mqueue")) {
    detail::mount_once("/dev/mqueue", "mqueue", hardened, nullptr);
  }
  if (detail::kernel_has_file_system("cgroup2")) {
    detail::mount_once("/sys/fs/cgroup", "cgroup2", hardened, nullptr);
  }
  for (const char* path : {"/tmp", "/run"}) {
    if (detail::is_missing_or_empty(path)) {
      detail::mount_once(path, "tmpfs", MS_NOSUID | MS_NODEV,
                         path == std::string("/tmp") ? "mode=1777" : "mode=0755");
    }
  }

  detail::symlink_if_missing("/proc/self/fd", "/dev/fd");
  detail::symlink_if_missing("/proc/self/fd/0", "/dev/stdin");
  detail::symlink_if_missing("/proc/self/fd/1", "/dev/stdout");
  detail::symlink_if_missing("/proc/self/fd/2", "/dev/stderr");
  detail::symlink_if_missing("pts/ptmx", "/dev/ptmx");
}

// The kernel opens /dev/console for the init only when the initramfs has that node. Without
// it, standard input, output and error are closed until devtmpfs is mounted; this opens them.
inline void open_console_if_closed() {
  if (::fcntl(STDERR_FILENO, F_GETFD) != -1) {
    return;
  }
  const int console = ::open("/dev/console", O_RDWR | O_NOCTTY);
  if (console < 0) {
    return;
  }
  for (int fd = STDIN_FILENO; fd <= STDERR_FILENO; ++fd) {
    if (fd != console) {
      ::dup2(console, fd);
    }
  }
  if (console > STDERR_FILENO) {
    ::close(console);
  }
}

} // namespace compactor::init
