// The VMM threads' seccomp filters (vmm/seccomp.hpp), loaded in forked children: what each
// role allows goes through, anything else ends the process with
// forbidden_system_call_exit_status and one line on stderr that names the call.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>

#include <fmt/format.h>

#include <compactor/devices/serial_output.hpp>
#include <compactor/support/event_loop.hpp>
#include <compactor/vmm/run_outcome.hpp>
#include <compactor/vmm/seccomp.hpp>

#include "forked_child.hpp"

using namespace compactor;
using namespace std::chrono_literals;
using vmm::seccomp::thread_role;
using testing::run_in_child;
using testing::say;

namespace {

constexpr auto all_roles = {thread_role::vcpu, thread_role::device_events,
                            thread_role::console_input, thread_role::console_output};

std::string refusal(thread_role role, long number, std::string_view name) {
  return fmt::format("compactor: a VMM thread ({}) made system call {} ({}), which its seccomp "
                     "filter forbids\n",
                     vmm::seccomp::to_string(role), number, name);
}

} // namespace

TEST_CASE("seccomp: every role writes under its filter, and opening a file, a socket or a "
          "program ends the process with the documented status and a line naming the call",
          "[unit]") {
  struct forbidden_call {
    long number;
    std::string_view name;
    int (*make)();
  };
  const forbidden_call calls[] = {
      {SYS_openat, "openat", [] { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }},
      {SYS_socket, "socket", [] { return ::socket(AF_INET, SOCK_STREAM, 0); }},
      {SYS_execve, "execve", [] {
         char* const argv[] = {const_cast<char*>("/bin/true"), nullptr};
         return ::execve("/bin/true", argv, nullptr);
       }},
  };
  for (const auto role : all_roles) {
    for (const auto& call : calls) {
      const auto result = run_in_child([&] {
        vmm::seccomp::install_filter(role);
        say("allowed write\n");
        call.make();
        say("the call came back\n");
        return 0;
      });
      INFO(vmm::seccomp::to_string(role) << ", " << call.name << ": " << result.stderr_text);
      CHECK(result.exit_status == vmm::forbidden_system_call_exit_status);
      CHECK(result.stderr_text == "allowed write\n" + refusal(role, call.number, call.name));
    }
  }
}

TEST_CASE("seccomp: a child that makes no forbidden call exits normally (the test's control)",
          "[unit]") {
  for (const auto role : all_roles) {
    const auto result = run_in_child([&] {
      vmm::seccomp::install_filter(role);
      void* memory = ::mmap(nullptr, 1 << 20, PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      std::string grown(4 << 20, 'x'); // malloc beyond its mmap threshold
      say("allocated " + std::to_string(grown.size()) + "\n");
      std::this_thread::sleep_for(1ms);
      return memory == MAP_FAILED ? 1 : 0;
    });
    INFO(vmm::seccomp::to_string(role) << ": " << result.stderr_text);
    CHECK(result.exit_status == 0);
    CHECK(result.stderr_text == "allocated 4194304\n");
  }
}

TEST_CASE("seccomp: ioctl passes only with the request numbers of the thread's role", "[unit]") {
  SECTION("a vCPU thread may issue KVM_RUN (here on a bad descriptor) but not TIOCGWINSZ") {
    const auto result = run_in_child([] {
      vmm::seccomp::install_filter(thread_role::vcpu);
      if (::ioctl(-1, KVM_RUN, 0) != -1 || errno != EBADF) {
        return 1;
      }
      say("KVM_RUN reached the kernel\n");
      winsize size{};
      ::ioctl(STDIN_FILENO, TIOCGWINSZ, &size);
      return 0;
    });
    INFO(result.stderr_text);
    CHECK(result.exit_status == vmm::forbidden_system_call_exit_status);
    CHECK(result.stderr_text ==
          "KVM_RUN reached the kernel\n" + refusal(thread_role::vcpu, SYS_ioctl, "ioctl"));
  }
  SECTION("the serial output thread may not issue KVM_RUN") {
    const auto result = run_in_child([] {
      vmm::seccomp::install_filter(thread_role::console_output);
      ::ioctl(-1, KVM_RUN, 0);
      return 0;
    });
    CHECK(result.exit_status == vmm::forbidden_system_call_exit_status);
    CHECK(result.stderr_text == refusal(thread_role::console_output, SYS_ioctl, "ioctl"));
  }
}

TEST_CASE("seccomp: a filtered thread cannot make memory executable", "[unit]") {
  const auto result = run_in_child([] {
    vmm::seccomp::install_filter(thread_role::device_events);
    void* memory =
        ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (memory == MAP_FAILED || ::mprotect(memory, 4096, PROT_READ) != 0) {
      return 1;
    }
    say("mapped\n");
    ::mprotect(memory, 4096, PROT_READ | PROT_EXEC);
    return 0;
  });
  INFO(result.stderr_text);
  CHECK(result.exit_status == vmm::forbidden_system_call_exit_status);
  CHECK(result.stderr_text ==
        "mapped\n" + refusal(thread_role::device_events, SYS_mprotect, "mprotect"));
}

TEST_CASE("seccomp: a filtered thread signals threads of its own process only", "[unit]") {
  const pid_t parent = ::getpid();
  const auto result = run_in_child([parent] {
    vmm::seccomp::install_filter(thread_role::vcpu);
    if (::syscall(SYS_tgkill, ::getpid(), ::gettid(), 0) != 0) {
      return 1;
    }
    say("signalled itself\n");
    ::syscall(SYS_tgkill, parent, parent, 0);
    return 0;
  });
  INFO(result.stderr_text);
  CHECK(result.exit_status == vmm::forbidden_system_call_exit_status);
  CHECK(result.stderr_text ==
        "signalled itself\n" + refusal(thread_role::vcpu, SYS_tgkill, "tgkill"));

  // The serial output's writer never ends a run, so it may not signal at all.
  const auto writer = run_in_child([] {
    vmm::seccomp::install_filter(thread_role::console_output);
    ::syscall(SYS_tgkill, ::getpid(), ::gettid(), 0);
    return 0;
  });
  CHECK(writer.exit_status == vmm::forbidden_system_call_exit_status);
  CHECK(writer.stderr_text == refusal(thread_role::console_output, SYS_tgkill, "tgkill"));
}

TEST_CASE("seccomp: a filter binds only the thread that loaded it, not its process",
          "[unit]") {
  const auto result = run_in_child([] {
    auto filtered =
        vmm::seccomp::start_thread(thread_role::console_input, true, [] { say("filtered\n"); });
    filtered.join();
    const int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      return 1;
    }
    ::close(fd);
    say("the starting thread opened /dev/null\n");
    auto offender = vmm::seccomp::start_thread(thread_role::console_input, true,
                                               [] { ::open("/dev/null", O_RDONLY); });
    offender.join();
    return 0;
  });
  INFO(result.stderr_text);
  CHECK(result.exit_status == vmm::forbidden_system_call_exit_status);
  CHECK(result.stderr_text == "filtered\nthe starting thread opened /dev/null\n" +
                                  refusal(thread_role::console_input, SYS_openat, "openat"));
}

TEST_CASE("seccomp: an event loop's thread is filtered, unless built inside filter_scope(false)",
          "[unit]") {
  const auto open_from_loop = [](bool filtered_scope) {
    return run_in_child([filtered_scope] {
      const vmm::seccomp::filter_scope scope(filtered_scope);
      const int wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
      std::atomic<int> opened{-2};
      event_loop loop;
      loop.add(wake, [&] {
        std::uint64_t count = 0;
        static_cast<void>(::read(wake, &count, sizeof count));
        opened = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
      });
      const std::uint64_t one = 1;
      static_cast<void>(::write(wake, &one, sizeof one));
      for (int tries = 0; tries < 5000 && opened == -2; ++tries) {
        std::this_thread::sleep_for(1ms);
      }
      say(fmt::format("opened {}\n", opened >= 0 ? "yes" : "no"));
      return 0;
    });
  };

  const auto filtered = open_from_loop(true);
  INFO(filtered.stderr_text);
  CHECK(filtered.exit_status == vmm::forbidden_system_call_exit_status);
  CHECK(filtered.stderr_text == refusal(thread_role::device_events, SYS_openat, "openat"));

  const auto unfiltered = open_from_loop(false);
  INFO(unfiltered.stderr_text);
  CHECK(unfiltered.exit_status == 0);
  CHECK(unfiltered.stderr_text == "opened yes\n");
  CHECK(vmm::seccomp::filter_new_threads()); // the scope ended with the child
}

TEST_CASE("seccomp: the serial output's writer thread is filtered by default and still writes",
          "[unit]") {
  const unsigned before = testing::filtered_threads();
  int pipe_fds[2];
  REQUIRE(::pipe2(pipe_fds, O_CLOEXEC) == 0);
  unique_fd read_end(pipe_fds[0]);
  {
    devices::fd_output output{unique_fd(pipe_fds[1])};
    CHECK(testing::filtered_threads() == before + 1);
    const std::string text = "through the filtered writer";
    output.write(std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
    output.flush();
    std::string received(text.size(), '\0');
    CHECK(::read(read_end.get(), received.data(), received.size()) ==
          static_cast<ssize_t>(text.size()));
    CHECK(received == text);
    CHECK(output.dropped() == 0);
  }
  CHECK(testing::eventually([&] { return testing::filtered_threads() == before; }));

  const vmm::seccomp::filter_scope unfiltered(false);
  devices::fd_output output{unique_fd(::dup(STDERR_FILENO))};
  CHECK(testing::filtered_threads() == before);
}

TEST_CASE("seccomp: a serial output's writer may be the last owner of its descriptor",
          "[unit]") {
  // The writer shares its state with the fd_output and often drops it last, closing the
  // descriptor on its own (filtered) thread.
  const auto result = run_in_child([] {
    for (int round = 0; round < 200; ++round) {
      devices::fd_output output{unique_fd(::open("/dev/null", O_WRONLY | O_CLOEXEC))};
      const std::uint8_t byte = 'x';
      output.write(std::span(&byte, 1));
    }
    testing::say("200 writers ended\n");
    std::this_thread::sleep_for(50ms); // for the last writers to finish
    return 0;
  });
  INFO(result.stderr_text);
  CHECK(result.exit_status == 0);
  CHECK(result.stderr_text == "200 writers ended\n");
}
