#include <catch2/catch.hpp>

#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

#include <compactor/vmm/deferred_teardown.hpp>

using namespace compactor;

namespace {

struct pipe_pair {
  unique_fd read_end;
  unique_fd write_end;

  pipe_pair() {
    int ends[2];
    REQUIRE(::pipe2(ends, O_CLOEXEC) == 0);
    read_end = unique_fd(ends[0]);
    write_end = unique_fd(ends[1]);
  }

  // Whether the reader sees end-of-file within `milliseconds`: every writer has closed.
  bool closed_within(int milliseconds) const {
    pollfd event{read_end.get(), POLLIN, 0};
    if (::poll(&event, 1, milliseconds) != 1) {
      return false;
    }
    char byte;
    return ::read(read_end.get(), &byte, 1) == 0;
  }
};

} // namespace

// A pipe's write end stands in for a VM descriptor: the reader sees end-of-file only when the
// last copy closes, which is when the kernel would tear a VM down.
TEST_CASE("deferred teardown: the keeper holds the descriptors it is given until released",
          "[unit]") {
  pipe_pair vm_like;
  pipe_pair unrelated;
  std::optional<vmm::deferred_teardown> keeper;
  const int kept[] = {vm_like.write_end.get()};
  keeper.emplace(kept);

  vm_like.write_end.reset();
  unrelated.write_end.reset();
  CHECK_FALSE(vm_like.closed_within(200));
  CHECK(unrelated.closed_within(5000)); // every other descriptor is closed in the keeper

  keeper.reset();
  CHECK(vm_like.closed_within(5000));
}

TEST_CASE("deferred teardown: the caller is left no child to reap", "[unit]") {
  pipe_pair vm_like;
  const int kept[] = {vm_like.write_end.get()};
  {
    vmm::deferred_teardown keeper(kept);
    CHECK(::waitpid(-1, nullptr, WNOHANG) == -1);
    CHECK(errno == ECHILD);
  }
  vm_like.write_end.reset();
  CHECK(vm_like.closed_within(5000));
}
