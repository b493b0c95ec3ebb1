// A thread that waits on file descriptors with epoll and runs a callback when one becomes
// readable. Devices use it to serve queue notifications (ioeventfd) and backend input (a tap)
// away from the vCPU threads, so that blocking host I/O never stalls a vCPU. The thread runs
// under the device-event seccomp filter (vmm/seccomp.hpp) unless told otherwise.
#pragma once

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>
#include <compactor/vmm/seccomp.hpp>

namespace compactor {

class event_loop {
public:
  using callback = std::function<void()>;

  // `filtered`: whether the thread loads its seccomp filter; by default, what the constructing
  // thread's filter_new_threads() says at this point.
  explicit event_loop(bool filtered = vmm::seccomp::filter_new_threads()) : filtered_(filtered) {
    epoll_.reset(::epoll_create1(EPOLL_CLOEXEC));
    if (!epoll_) {
      throw_errno("epoll_create1");
    }
    wake_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!wake_) {
      throw_errno("eventfd");
    }
    watch_fd(wake_.get());
  }

  ~event_loop() { stop(); }

  event_loop(const event_loop&) = delete;
  event_loop& operator=(const event_loop&) = delete;

  // Runs `on_readable` on the loop's thread each time `fd` becomes readable (edge-triggered:
  // the callback must consume what is there, or know that more input will wake it again).
  void add(int fd, callback on_readable) {
    {
      std::scoped_lock lock(mutex_);
      callbacks_[fd] = std::move(on_readable);
    }
    watch_fd(fd);
    start();
  }

  // Stops the thread; callbacks already running finish first.
  void stop() {
    if (!thread_.joinable()) {
      return;
    }
    stopping_ = true;
    const std::uint64_t one = 1;
    static_cast<void>(::write(wake_.get(), &one, sizeof one));
    thread_.join();
  }

private:
  void watch_fd(int fd) {
    epoll_event event{};
    event.events = EPOLLIN | EPOLLET;
    event.data.fd = fd;
    check_syscall(::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event), "epoll_ctl ADD");
  }

  void start() {
    if (!thread_.joinable()) {
      thread_ = vmm::seccomp::start_thread(vmm::seccomp::thread_role::device_events, filtered_,
                                           [this] { loop(); });
    }
  }

  void loop() {
    epoll_event events[16];
    while (!stopping_) {
      const int count = ::epoll_wait(epoll_.get(), events, 16, -1);
      for (int n = 0; n < count && !stopping_; ++n) {
        if (events[n].data.fd == wake_.get()) {
          continue;
        }
        callback on_readable;
        {
          std::scoped_lock lock(mutex_);
          on_readable = callbacks_[events[n].data.fd];
        }
        if (on_readable) {
          on_readable();
        }
      }
    }
  }

  bool filtered_;
  unique_fd epoll_;
  unique_fd wake_;
  std::mutex mutex_;
  std::map<int, callback> callbacks_;
  std::atomic<bool> stopping_{false};
  std::thread thread_;
};

} // namespace compactor
