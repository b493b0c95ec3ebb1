// A network namespace that a test creates for itself, so that its taps and traffic never reach
// the host's network. The calling thread enters it on construction and returns to its
// original namespace on destruction, when the namespace is deleted again.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

#include <catch2/catch.hpp>

#include <compactor/support/unique_fd.hpp>

namespace compactor::testing {

class network_namespace {
public:
  network_namespace() {
    static std::atomic<int> counter{0};
    name_ = "compactor-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
    REQUIRE(run("ip netns add " + name_) == 0);

    original_.reset(::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC));
    REQUIRE(original_);
    unique_fd target(::open(("/run/netns/" + name_).c_str(), O_RDONLY | O_CLOEXEC));
    REQUIRE(target);
    REQUIRE(::setns(target.get(), CLONE_NEWNET) == 0);
    REQUIRE(run("ip link set lo up") == 0);
  }

  ~network_namespace() {
    ::setns(original_.get(), CLONE_NEWNET);
    run("ip netns delete " + name_);
  }

  network_namespace(const network_namespace&) = delete;
  network_namespace& operator=(const network_namespace&) = delete;

  [[nodiscard]] const std::string& name() const noexcept { return name_; }

  // Runs a shell command inside the namespace.
  int exec(const std::string& command) const {
    return run("ip netns exec " + name_ + " " + command);
  }

private:
  static int run(const std::string& command) {
    return std::system((command + " >/dev/null 2>&1").c_str());
  }

  std::string name_;
  unique_fd original_;
};

} // namespace compactor::testing
