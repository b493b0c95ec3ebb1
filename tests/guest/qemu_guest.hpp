// Test support for the guest side: an initramfs made of the init, busybox-static and a launch
// configuration, booted under qemu-system-x86_64 -M microvm with the project's kernel.
//
// The build passes the paths of its kernel and init as COMPACTOR_TEST_BZIMAGE,
// COMPACTOR_TEST_VMLINUX and COMPACTOR_TEST_INIT (tests/guest/meson.build).
#pragma once

#include <archive.h>
#include <archive_entry.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <compactor/guest/kernel_parameters.hpp>
#include <compactor/guest/launch_config.hpp>
#include <compactor/guest/protocol.hpp>
#include <compactor/support/error.hpp>

namespace compactor::testing {

inline const std::filesystem::path busybox_path = "/bin/busybox";

// A temporary directory removed with everything in it.
class scratch_directory {
public:
  scratch_directory() {
    std::string pattern = (std::filesystem::temp_directory_path() / "compactor-guest-XXXXXX");
    if (::mkdtemp(pattern.data()) == nullptr) {
      throw_errno("mkdtemp");
    }
    path_ = pattern;
  }
  scratch_directory(const scratch_directory&) = delete;
  scratch_directory& operator=(const scratch_directory&) = delete;
  ~scratch_directory() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  [[nodiscard]] const std::filesystem::path& path() const { return path_; }

private:
  std::filesystem::path path_;
};

inline std::string read_whole_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    throw error("cannot read " + path.string());
  }
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

// Writes a cpio "newc" archive, the format the kernel unpacks as an initramfs.
class initramfs_writer {
public:
  explicit initramfs_writer(const std::filesystem::path& path)
      : archive_(archive_write_new(), archive_write_free) {
    if (archive_write_set_format_cpio_newc(archive_.get()) != ARCHIVE_OK ||
        archive_write_open_filename(archive_.get(), path.c_str()) != ARCHIVE_OK) {
      fail("open");
    }
  }

  void directory(const std::string& path, mode_t mode = 0755) {
    add(path, AE_IFDIR | mode, {}, {});
  }
  void file(const std::string& path, const std::string& content, mode_t mode = 0644) {
    add(path, AE_IFREG | mode, content, {});
  }
  void symlink(const std::string& path, const std::string& target) {
    add(path, AE_IFLNK | 0777, {}, target);
  }
  void character_device(const std::string& path, unsigned major, unsigned minor) {
    add(path, AE_IFCHR | 0600, {}, {}, makedev(major, minor));
  }

  void close() {
    if (archive_write_close(archive_.get()) != ARCHIVE_OK) {
      fail("close");
    }
  }

private:
  void add(const std::string& path, mode_t mode, const std::string& content,
           const std::string& link_target, dev_t device = 0) {
    std::unique_ptr<archive_entry, decltype(&archive_entry_free)> entry(archive_entry_new(),
                                                                        archive_entry_free);
    archive_entry_set_pathname(entry.get(), path.c_str());
    archive_entry_set_mode(entry.get(), mode);
    archive_entry_set_size(entry.get(), static_cast<la_int64_t>(content.size()));
    archive_entry_set_nlink(entry.get(), 1);
    archive_entry_set_ino(entry.get(), ++inode_);
    if (!link_target.empty()) {
      archive_entry_set_symlink(entry.get(), link_target.c_str());
    }
    if (device != 0) {
      archive_entry_set_rdev(entry.get(), device);
    }
    if (archive_write_header(archive_.get(), entry.get()) != ARCHIVE_OK) {
      fail("write_header " + path);
    }
    if (!content.empty() &&
        archive_write_data(archive_.get(), content.data(), content.size()) !=
            static_cast<la_ssize_t>(content.size())) {
      fail("write_data " + path);
    }
  }

  [[noreturn]] void fail(const std::string& step) {
    throw error("libarchive " + step + ": " + archive_error_string(archive_.get()));
  }

  std::unique_ptr<archive, decltype(&archive_write_free)> archive_;
  la_int64_t inode_ = 0;
};

// The names busybox answers to, as `busybox --list` prints them.
inline std::vector<std::string> busybox_applets() {
  std::vector<std::string> applets;
  std::unique_ptr<FILE, decltype(&::pclose)> list(
      ::popen((busybox_path.string() + " --list").c_str(), "r"), ::pclose);
  if (!list) {
    throw_errno("popen busybox --list");
  }
  char line[256];
  while (std::fgets(line, sizeof line, list.get()) != nullptr) {
    std::string name(line);
    while (!name.empty() && (name.back() == '\n' || name.back() == '\r')) {
      name.pop_back();
    }
    if (!name.empty() && name != "busybox") {
      applets.push_back(name);
    }
  }
  return applets;
}

using file_list = std::vector<std::pair<std::string, std::string>>;

// The files of a small image: busybox with all its applets in /bin, a passwd and group file
// with a non-root user, `files` (executable when their names end in .sh), the init and its
// launch configuration. Without `console_node` the image has no /dev/console, so the kernel
// starts the init with its standard streams closed.
inline void write_busybox_initramfs(const std::filesystem::path& path,
                                    const guest::launch_config& config,
                                    const file_list& files = {}, bool console_node = true) {
  initramfs_writer cpio(path);
  for (const char* directory : {"bin", "dev", "etc", "proc", "sys", "root", "tmp", "run",
                                "home", "home/app", ".compactor", "data"}) {
    cpio.directory(directory, std::string(directory) == "tmp" ? 01777 : 0755);
  }
  if (console_node) {
    cpio.character_device("dev/console", 5, 1);
  }
  cpio.file("bin/busybox", read_whole_file(busybox_path), 0755);
  for (const auto& applet : busybox_applets()) {
    cpio.symlink("bin/" + applet, "busybox");
  }
  cpio.file("etc/passwd", "root:x:0:0:root:/root:/bin/sh\n"
                          "app:x:1000:1000:App:/home/app:/bin/sh\n");
  cpio.file("etc/group", "root:x:0:\n"
                         "wheel:x:10:root,app\n"
                         "audio:x:29:app\n"
                         "app:x:1000:\n");
  cpio.file("etc/resolv.conf", "nameserver 192.0.2.99\n");
  for (const auto& [name, content] : files) {
    cpio.file(name, content, name.ends_with(".sh") ? 0755 : 0644);
  }
  cpio.file(std::string(guest::init_path).substr(1), read_whole_file(COMPACTOR_TEST_INIT), 0755);
  cpio.file(std::string(guest::launch_config_path).substr(1), write_launch_config(config));
  cpio.close();
}

struct guest_run {
  int qemu_status = -1;       // QEMU's exit status; isa-debug-exit makes it (status << 1) | 1
  std::string console;        // everything the guest wrote on its serial console
  bool timed_out = false;
  std::optional<int> reported_status; // from the init's last console line
  double seconds = 0;

  // The lines the workload printed that start with `prefix`, without the prefix.
  [[nodiscard]] std::vector<std::string> lines(const std::string& prefix) const {
    std::vector<std::string> result;
    std::istringstream text(console);
    for (std::string line; std::getline(text, line);) {
      if (!line.empty() && line.back() == '\r') {
        line.pop_back();
      }
      if (line.starts_with(prefix)) {
        result.push_back(line.substr(prefix.size()));
      }
    }
    return result;
  }
};

struct boot_options {
  std::filesystem::path kernel = COMPACTOR_TEST_BZIMAGE;
  std::string extra_kernel_arguments;
  std::vector<std::string> extra_qemu_arguments;
  std::vector<std::string> command_prefix; // e.g. {"ip", "netns", "exec", "ns"}
  std::chrono::seconds timeout{90};
};

// Boots `initramfs` and waits for QEMU to end.
inline guest_run boot(const std::filesystem::path& initramfs, const boot_options& options = {}) {
  const auto kernel_arguments =
      guest::base_kernel_arguments() + " " + options.extra_kernel_arguments;
  std::vector<std::string> command = options.command_prefix;
  for (const std::string argument :
       {"qemu-system-x86_64", "-M", "microvm,acpi=off", "-accel", "tcg", "-cpu", "max", "-m",
        "256", "-smp", "1", "-nographic", "-no-reboot", "-nodefaults", "-serial", "stdio",
        "-device", "isa-debug-exit,iobase=0x501,iosize=1"}) {
    command.push_back(argument);
  }
  command.insert(command.end(), {"-kernel", options.kernel.string(), "-initrd",
                                 initramfs.string(), "-append", kernel_arguments});
  command.insert(command.end(), options.extra_qemu_arguments.begin(),
                 options.extra_qemu_arguments.end());

  int output[2];
  if (::pipe2(output, O_CLOEXEC) != 0) {
    throw_errno("pipe2");
  }
  const auto started = std::chrono::steady_clock::now();
  const pid_t child = ::fork();
  if (child < 0) {
    throw_errno("fork");
  }
  if (child == 0) {
    ::dup2(output[1], STDOUT_FILENO);
    ::dup2(output[1], STDERR_FILENO);
    const int null = ::open("/dev/null", O_RDONLY);
    ::dup2(null, STDIN_FILENO);
    std::vector<char*> argv;
    for (auto& argument : command) {
      argv.push_back(argument.data());
    }
    argv.push_back(nullptr);
    ::execvp(argv[0], argv.data());
    ::_exit(127);
  }
  ::close(output[1]);

  guest_run run;
  const auto deadline = started + options.timeout;
  char buffer[4096];
  while (true) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      run.timed_out = true;
      ::kill(child, SIGKILL);
      break;
    }
    pollfd wait_for{output[0], POLLIN, 0};
    if (::poll(&wait_for, 1, static_cast<int>(left.count())) <= 0) {
      continue;
    }
    const auto got = ::read(output[0], buffer, sizeof buffer);
    if (got <= 0) {
      break;
    }
    run.console.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(output[0]);
  int status = 0;
  ::waitpid(child, &status, 0);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  run.qemu_status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;

  const std::string prefix = guest::exit_status_console_prefix;
  const auto reported = run.lines(prefix);
  if (!reported.empty()) {
    run.reported_status = std::stoi(reported.back());
  }
  return run;
}

// The QEMU exit status that isa-debug-exit gives for a status written to the exit port.
inline int qemu_status_for(int status) {
  return ((status << 1) | 1) & 0xff;
}

} // namespace compactor::testing
