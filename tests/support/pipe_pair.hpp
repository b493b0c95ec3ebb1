// A pipe whose two ends close with the test: for tests that watch what a component writes, or
// whether every copy of a descriptor has been closed (the reader then sees end-of-file).
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <compactor/support/unique_fd.hpp>

namespace compactor::testing {

struct pipe_pair {
  unique_fd read_end;
  unique_fd write_end;

  pipe_pair() {
    int fds[2];
    REQUIRE(::pipe2(fds, O_CLOEXEC) == 0);
    read_end.reset(fds[0]);
    write_end.reset(fds[1]);
  }

  // Whether the reader sees end-of-file within `milliseconds`: every writer has closed.
  [[nodiscard]] bool closed_within(int milliseconds) const {
    pollfd event{read_end.get(), POLLIN, 0};
    if (::poll(&event, 1, milliseconds) != 1) {
      return false;
    }
    char byte;
    return ::read(read_end.get(), &byte, 1) == 0;
  }
};

} // namespace compactor::testing
