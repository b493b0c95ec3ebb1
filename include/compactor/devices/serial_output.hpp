// Where a serial port's transmitted bytes go.
//
// An output is any type with `void write(std::span<const std::uint8_t>)`, called on the vCPU
// thread while it holds the device. It must not block: a guest printing to a slow terminal
// must not stall its vCPU.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>
#include <compactor/vmm/seccomp.hpp>

namespace compactor::devices {

template <typename O>
concept serial_output = requires(O& output, std::span<const std::uint8_t> bytes) {
  output.write(bytes);
};

// Writes to a file descriptor (stdout, a file) from a writer thread through a bounded buffer.
// When the buffer is full the bytes are dropped and counted instead of blocking the guest.
// The writer thread runs under the console-output seccomp filter (vmm/seccomp.hpp) when the
// constructing thread's filter_new_threads() says so, as it does by default.
class fd_output {
public:
  static constexpr std::size_t default_capacity = 256 * 1024;

  // Takes ownership of `fd`. To write to the process's stdout, pass dup(STDOUT_FILENO).
  explicit fd_output(unique_fd fd, std::size_t capacity = default_capacity)
      : state_(std::make_shared<state>(std::move(fd), capacity)) {
    // The thread shares the state, so that a writer stuck on a stalled descriptor can be left
    // behind at destruction.
    vmm::seccomp::start_thread(vmm::seccomp::thread_role::console_output,
                               vmm::seccomp::filter_new_threads(), [s = state_] { s->drain(); })
        .detach();
  }

  // Appends to (or creates) the file at `path`.
  [[nodiscard]] static fd_output to_file(const std::string& path,
                                         std::size_t capacity = default_capacity) {
    unique_fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644));
    if (!fd) {
      throw_errno("open " + path);
    }
    return fd_output(std::move(fd), capacity);
  }

  [[nodiscard]] static fd_output to_stdout(std::size_t capacity = default_capacity) {
    unique_fd fd(::fcntl(STDOUT_FILENO, F_DUPFD_CLOEXEC, 0));
    if (!fd) {
      throw_errno("fcntl F_DUPFD_CLOEXEC of stdout");
    }
    return fd_output(std::move(fd), capacity);
  }

  fd_output(fd_output&&) noexcept = default;
  fd_output& operator=(fd_output&&) noexcept = default;
  // Waits a moment for the pending bytes to leave, then lets the writer finish on its own.
  ~fd_output() {
    if (state_) {
      state_->stop(std::chrono::milliseconds(200));
    }
  }

  void write(std::span<const std::uint8_t> bytes) {
    std::lock_guard lock(state_->mutex);
    const std::size_t room = state_->capacity - state_->pending.size();
    const std::size_t taken = std::min(room, bytes.size());
    state_->pending.insert(state_->pending.end(), bytes.begin(), bytes.begin() + taken);
    state_->dropped += bytes.size() - taken;
    state_->wake.notify_one();
  }

  // Waits until every accepted byte has been handed to the kernel.
  void flush() {
    std::unique_lock lock(state_->mutex);
    state_->idle.wait(lock, [s = state_.get()] { return s->pending.empty() && !s->writing; });
  }

  // Bytes dropped because the buffer was full, and bytes lost to write errors.
  [[nodiscard]] std::uint64_t dropped() const {
    std::lock_guard lock(state_->mutex);
    return state_->dropped;
  }

private:
  struct state {
    state(unique_fd output_fd, std::size_t buffer_capacity)
        : fd(std::move(output_fd)), capacity(buffer_capacity) {}

    void drain() {
      std::vector<std::uint8_t> batch;
      std::unique_lock lock(mutex);
      for (;;) {
        wake.wait(lock, [this] { return stopping || !pending.empty(); });
        if (pending.empty()) {
          finished = true;
          idle.notify_all();
          return;
        }
        batch.swap(pending);
        writing = true;
        lock.unlock();
        const std::size_t lost = write_all(batch);
        batch.clear();
        lock.lock();
        dropped += lost;
        writing = false;
        idle.notify_all();
      }
    }

    // Returns how many bytes could not be written.
    std::size_t write_all(std::span<const std::uint8_t> bytes) const {
      while (!bytes.empty()) {
        const ssize_t written = ::write(fd.get(), bytes.data(), bytes.size());
        if (written < 0) {
          if (errno == EINTR) {
            continue;
          }
          return bytes.size();
        }
        bytes = bytes.subspan(static_cast<std::size_t>(written));
      }
      return 0;
    }

    void stop(std::chrono::milliseconds grace) {
      std::unique_lock lock(mutex);
      stopping = true;
      wake.notify_one();
      idle.wait_for(lock, grace, [this] { return finished; });
    }

    unique_fd fd;
    std::size_t capacity;
    mutable std::mutex mutex;
    std::condition_variable wake;
    std::condition_variable idle;
    std::vector<std::uint8_t> pending;
    std::uint64_t dropped = 0;
    bool writing = false;
    bool stopping = false;
    bool finished = false;
  };

  std::shared_ptr<state> state_;
};

// Keeps everything the guest transmits in memory; copies share the text. For callers that
// want the console as a string (tests, the program's status-line parsing).
class string_output {
public:
  string_output() : state_(std::make_shared<state>()) {}

  void write(std::span<const std::uint8_t> bytes) {
    std::lock_guard lock(state_->mutex);
    state_->text.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  }

  [[nodiscard]] std::string text() const {
    std::lock_guard lock(state_->mutex);
    return state_->text;
  }

private:
  struct state {
    std::mutex mutex;
    std::string text;
  };
  std::shared_ptr<state> state_;
};

static_assert(serial_output<fd_output> && serial_output<string_output>);

} // namespace compactor::devices
