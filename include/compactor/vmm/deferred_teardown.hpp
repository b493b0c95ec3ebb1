// Moves the host kernel's teardown of a VM out of the caller's way.
//
// Closing the last descriptor of a VM makes the kernel destroy it before close() returns. With
// an in-kernel irqchip and PIT this waits for RCU grace periods: 10-30 ms on this project's
// machines (benchmarks/vmm/bare_kvm --irqchip --phases), more than everything else in a short
// run. A keeper process holds copies of the VM's descriptors while the machine closes its own,
// so the machine's close is not the last one; when the keeper is released it exits, and the
// teardown runs in its exit instead. The caller (and whoever waits for the caller, such as a
// shell reading its exit status) no longer waits for it.
//
// The keeper is a grandchild: the intermediate child exits at once and is reaped here, so no
// zombie is left to the caller and the keeper belongs to init (or the nearest subreaper). It
// closes every other descriptor first, so it never holds a pipe, terminal or file open.
#pragma once

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstddef>
#include <span>
#include <vector>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::vmm {

class deferred_teardown {
public:
  // Starts a keeper holding `descriptors` (the VM's and its vCPUs'). From here on the machine
  // may close its own copies cheaply. Throws when the keeper cannot be started.
  explicit deferred_teardown(std::span<const int> descriptors) {
    int ends[2];
    if (::pipe2(ends, O_CLOEXEC) != 0) {
      throw_errno("pipe2 for the VM teardown keeper");
    }
    unique_fd read_end(ends[0]);
    release_ = unique_fd(ends[1]);

    // Everything the keeper does after fork is an async-signal-safe system call, so it is
    // prepared here: the ranges of descriptors to close around the ones it keeps.
    std::vector<int> kept(descriptors.begin(), descriptors.end());
    kept.push_back(read_end.get());
    std::sort(kept.begin(), kept.end());
    std::vector<std::array<unsigned, 2>> gaps;
    unsigned next = 0;
    for (const int fd : kept) {
      const auto value = static_cast<unsigned>(fd);
      if (value > next) {
        gaps.push_back({next, value - 1});
      }
      next = value + 1;
    }
    gaps.push_back({next, ~0u});

    const pid_t child = ::fork();
    if (child < 0) {
      throw_errno("fork of the VM teardown keeper");
    }
    if (child == 0) {
      if (::fork() == 0) {
        keep_until_released(read_end.get(), gaps);
      }
      ::_exit(0);
    }
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
  }

  deferred_teardown(const deferred_teardown&) = delete;
  deferred_teardown& operator=(const deferred_teardown&) = delete;

  // Releases the keeper (by closing the pipe's write end): it exits and the kernel tears the
  // VM down there. Call it, or destroy this object, after closing the machine's own copies.
  ~deferred_teardown() = default;

private:
  [[noreturn]] static void keep_until_released(int release,
                                               const std::vector<std::array<unsigned, 2>>& gaps) {
    for (const auto& gap : gaps) {
      ::close_range(gap[0], gap[1], 0);
    }
    char byte;
    while (::read(release, &byte, 1) < 0 && errno == EINTR) {
    }
    ::_exit(0);
  }

  unique_fd release_;
};

} // namespace compactor::vmm
