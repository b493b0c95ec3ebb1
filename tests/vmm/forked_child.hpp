// Helpers for the seccomp tests: a function run in a forked child, reported as how the child
// ended and what it wrote to stderr (for tests whose subject ends the process: a seccomp
// filter's SIGSYS handler), and the count of this process's filtered threads.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

#include <catch2/catch.hpp>

namespace compactor::testing {

struct child_result {
  int exit_status = -1; // -1 when a signal ended the child
  int signal = 0;
  std::string stderr_text;
};

// `body` returns the child's exit status; it must not use Catch's assertions, which belong to
// the parent. Whatever it throws ends the child with status 99 and the message on stderr.
inline child_result run_in_child(const std::function<int()>& body) {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::dup2(pipe_fds[1], STDERR_FILENO);
    ::close(pipe_fds[0]);
    ::close(pipe_fds[1]);
    int status = 99;
    try {
      status = body();
    } catch (const std::exception& failure) {
      const std::string line = std::string("child threw: ") + failure.what() + "\n";
      static_cast<void>(::write(STDERR_FILENO, line.data(), line.size()));
    }
    ::_exit(status);
  }
  ::close(pipe_fds[1]);
  child_result result;
  char buffer[512];
  for (;;) {
    const ssize_t size = ::read(pipe_fds[0], buffer, sizeof buffer);
    if (size < 0 && errno == EINTR) {
      continue;
    }
    if (size <= 0) {
      break;
    }
    result.stderr_text.append(buffer, static_cast<std::size_t>(size));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(status)) {
    result.exit_status = WEXITSTATUS(status);
  } else if (WIFSIGNALED(status)) {
    result.signal = WTERMSIG(status);
  }
  return result;
}

// How many threads of this process run under a seccomp filter (proc(5): Seccomp: 2). KVM's
// own workers are left out: since Linux 6.13 its huge-page recovery thread (kvm-nx-lpage-re)
// is listed among the process's threads and inherits the filter of the vCPU that started it.
inline unsigned filtered_threads() {
  unsigned count = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::string name;
    std::getline(std::ifstream(task.path() / "comm"), name);
    if (name.starts_with("kvm-")) {
      continue;
    }
    std::ifstream status(task.path() / "status");
    std::string line;
    while (std::getline(status, line)) {
      if (line.starts_with("Seccomp:")) {
        count += line.find('2') != std::string::npos ? 1 : 0;
      }
    }
  }
  return count;
}

// Polls `condition` every 10 ms until it holds or `limit` has passed.
template <typename Condition>
bool eventually(Condition condition, std::chrono::milliseconds limit = std::chrono::seconds(5)) {
  for (auto tries = limit / std::chrono::milliseconds(10); tries > 0; --tries) {
    if (condition()) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return condition();
}

// Writes `text` to stderr with one system call, as a filtered thread may.
inline void say(const std::string& text) {
  static_cast<void>(::write(STDERR_FILENO, text.data(), text.size()));
}

} // namespace compactor::testing
