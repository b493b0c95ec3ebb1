// Starting the workload as a child of PID 1 and supervising it: signal forwarding, zombie
// reaping and the exit status `docker run` would report.
#pragma once

#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <compactor/guest/user_database.hpp>
#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

#include "console.hpp"

namespace compactor::init {

// The workload's process: what to execute and as whom.
struct workload {
  std::vector<std::string> argv;
  std::vector<std::string> env; // NAME=value, complete
  std::string workdir;
  guest::exec_user user;
};

// `docker run` statuses for a workload that never ran.
inline constexpr int status_not_executable = 126;
inline constexpr int status_not_found = 127;

namespace detail {

// Signals PID 1 passes on to the workload; the kernel never delivers them to PID 1 on its own,
// so they come from the VMM (Ctrl-Alt-Del is SIGINT once RB_DISABLE_CAD is set) or from
// processes in the guest.
inline constexpr std::array forwarded_signals = {SIGTERM, SIGINT, SIGHUP, SIGQUIT,
                                                 SIGUSR1, SIGUSR2, SIGWINCH};

inline sigset_t supervised_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGCHLD);
  for (const int signal : forwarded_signals) {
    sigaddset(&set, signal);
  }
  return set;
}

// What the child sends back through its close-on-exec pipe when it cannot start the workload.
struct start_failure {
  int error_number;
  char step[56];
};

inline std::string env_value(const std::vector<std::string>& env, std::string_view name) {
  for (const auto& entry : env) {
    if (entry.size() > name.size() && entry.starts_with(name) && entry[name.size()] == '=') {
      return entry.substr(name.size() + 1);
    }
  }
  return {};
}

// Like execvpe(), but searches the workload's PATH rather than the init's. Returns only on
// failure, with the errno that decides between 126 and 127.
inline int execute(const std::vector<std::string>& argv, const std::vector<std::string>& env) {
  std::vector<char*> arguments;
  for (const auto& argument : argv) {
    arguments.push_back(const_cast<char*>(argument.c_str()));
  }
  arguments.push_back(nullptr);
  std::vector<char*> environment;
  for (const auto& entry : env) {
    environment.push_back(const_cast<char*>(entry.c_str()));
  }
  environment.push_back(nullptr);

  const auto& program = argv.front();
  if (program.find('/') != std::string::npos) {
    ::execve(program.c_str(), arguments.data(), environment.data());
    return errno;
  }
  bool denied = false;
  const auto path = env_value(env, "PATH");
  std::size_t start = 0;
  while (start <= path.size()) {
    const auto end = std::min(path.find(':', start), path.size());
    auto directory = path.substr(start, end - start);
    start = end + 1;
    const auto candidate = (directory.empty() ? std::string(".") : directory) + "/" + program;
    ::execve(candidate.c_str(), arguments.data(), environment.data());
    if (errno == EACCES) {
      denied = true;
    } else if (errno != ENOENT && errno != ENOTDIR) {
      return errno;
    }
  }
  return denied ? EACCES : ENOENT;
}

[[noreturn]] inline void run_child(const workload& work, int report_fd) {
  start_failure failure{};
  const auto fail = [&](const char* step, int error_number) {
    failure.error_number = error_number;
    std::strncpy(failure.step, step, sizeof failure.step - 1);
    [[maybe_unused]] const auto written = ::write(report_fd, &failure, sizeof failure);
    ::_exit(1);
  };

  struct sigaction default_action {};
  default_action.sa_handler = SIG_DFL;
  for (int signal = 1; signal < NSIG; ++signal) {
    ::sigaction(signal, &default_action, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);

  // Its own session, with the console as controlling terminal so that a shell's job control
  // and ^C work; the ioctl fails harmlessly when standard input is not a terminal.
  ::setsid();
  ::ioctl(STDIN_FILENO, TIOCSCTTY, 0);

  if (::setgroups(work.user.supplementary_gids.size(), work.user.supplementary_gids.data()) != 0) {
    fail("setgroups", errno);
  }
  if (::setgid(work.user.gid) != 0) {
    fail("setgid", errno);
  }
  if (::setuid(work.user.uid) != 0) {
    fail("setuid", errno);
  }
  if (::chdir(work.workdir.c_str()) != 0) {
    fail("chdir to the working directory", errno);
  }
  fail("exec", execute(work.argv, work.env));
  ::_exit(1);
}

inline int docker_status(int wait_status) {
  if (WIFSIGNALED(wait_status)) {
    return 128 + WTERMSIG(wait_status);
  }
  return WEXITSTATUS(wait_status);
}

} // namespace detail

// Blocks the supervised signals in the init (sigwaitinfo() takes them); call once, before
// anything else starts. The kernel drops a signal aimed at PID 1 whose disposition is the
// default one unless it is blocked; a handler keeps them from being lost in any case.
inline void block_supervised_signals() {
  const auto set = detail::supervised_signals();
  check_syscall(::sigprocmask(SIG_BLOCK, &set, nullptr), "sigprocmask");
  struct sigaction action {};
  action.sa_handler = [](int) {};
  for (int signal = 1; signal < NSIG; ++signal) {
    if (sigismember(&set, signal) == 1) {
      check_syscall(::sigaction(signal, &action, nullptr), "sigaction");
    }
  }
}

// Runs the workload to its end and returns its status as `docker run` reports it. Processes
// it leaves behind are killed once it has ended, as they are when a container's main process
// exits. Failures to start it are logged; they give 127 (not found), 126 (not executable) or
// throw for the steps before exec.
inline int run_workload(const workload& work) {
  if (work.argv.empty()) {
    throw error("no command specified: the image has neither ENTRYPOINT nor CMD");
  }

  int pipe_fds[2];
  check_syscall(::pipe2(pipe_fds, O_CLOEXEC), "pipe2");
  unique_fd report_read(pipe_fds[0]);
  unique_fd report_write(pipe_fds[1]);

  const pid_t child = check_syscall(::fork(), "fork");
  if (child == 0) {
    detail::run_child(work, report_write.get());
  }
  report_write.reset();

  detail::start_failure failure{};
  ssize_t got = 0;
  do {
    got = ::read(report_read.get(), &failure, sizeof failure);
  } while (got < 0 && errno == EINTR);
  const bool started = got != static_cast<ssize_t>(sizeof failure);

  int status = 0;
  bool ended = !started;
  const auto set = detail::supervised_signals();
  while (!ended) {
    siginfo_t info{};
    if (::sigwaitinfo(&set, &info) < 0) {
      continue;
    }
    if (info.si_signo != SIGCHLD) {
      ::kill(child, info.si_signo);
      continue;
    }
    int wait_status = 0;
    for (pid_t reaped; (reaped = ::waitpid(-1, &wait_status, WNOHANG)) > 0;) {
      if (reaped == child) {
        status = detail::docker_status(wait_status);
        ended = true;
      }
    }
  }

  ::kill(-1, SIGKILL);
  while (::waitpid(-1, nullptr, 0) > 0 || errno == EINTR) {
  }

  if (started) {
    return status;
  }
  const std::string program = work.argv.front();
  if (std::string(failure.step) != "exec") {
    throw_errno(failure.error_number, std::string(failure.step));
  }
  log_line("cannot execute %s: %s", program.c_str(), std::strerror(failure.error_number));
  return failure.error_number == ENOENT || failure.error_number == ENOTDIR
             ? status_not_found
             : status_not_executable;
}

} // namespace compactor::init
