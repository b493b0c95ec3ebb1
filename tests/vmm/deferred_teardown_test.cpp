#include <catch2/catch.hpp>

#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <optional>

#include <compactor/vmm/deferred_teardown.hpp>

#include "../support/pipe_pair.hpp"

using namespace compactor;

using testing::pipe_pair;

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
