#include <catch2/catch.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <string>

#include <compactor/devices/serial_output.hpp>

#include "../support/pipe_pair.hpp"

using namespace compactor;

namespace {

using testing::pipe_pair;

std::string drain(int fd) {
  std::string text;
  char buffer[65536];
  ::fcntl(fd, F_SETFL, O_NONBLOCK);
  for (;;) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n <= 0) {
      return text;
    }
    text.append(buffer, static_cast<std::size_t>(n));
  }
}

std::span<const std::uint8_t> bytes(std::string_view text) {
  return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

} // namespace

TEST_CASE("fd output: bytes reach the descriptor in order after flush", "[unit]") {
  pipe_pair pipe;
  devices::fd_output output(std::move(pipe.write_end));
  output.write(bytes("console "));
  output.write(bytes("line\n"));
  output.flush();
  CHECK(drain(pipe.read_end.get()) == "console line\n");
  CHECK(output.dropped() == 0);
}

TEST_CASE("fd output: a reader that stalls never blocks the writer; excess is counted",
          "[unit]") {
  pipe_pair pipe;
  const std::size_t capacity = 4096;
  devices::fd_output output(std::move(pipe.write_end), capacity);
  const std::string chunk(1024, 'x');

  // A pipe holds 64 KiB; 1 MiB more than that must be dropped, and quickly.
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 1024 + 128; ++i) {
    output.write(bytes(chunk));
  }
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(2));
  const auto dropped = output.dropped();
  CHECK(dropped > 1000u * 1024u);

  // Once the reader catches up, what was accepted arrives.
  std::string received;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (received.size() + dropped < (1024 + 128) * 1024 &&
         std::chrono::steady_clock::now() < deadline) {
    received += drain(pipe.read_end.get());
  }
  CHECK(received.size() + output.dropped() == (1024 + 128) * 1024);
}

TEST_CASE("string output: copies share one text", "[unit]") {
  devices::string_output first;
  devices::string_output second = first;
  first.write(bytes("ab"));
  second.write(bytes("c"));
  CHECK(first.text() == "abc");
}
