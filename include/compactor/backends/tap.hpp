// A Linux tap interface, the network behind virtio-net.
//
// Frames cross the tap with a 12-byte virtio-net header in front (IFF_VNET_HDR with
// TUNSETVNETHDRSZ 12), the same header virtio 1.x puts in front of every frame, so no
// translation happens between the guest's rings and the tap.
#pragma once

// <net/if.h> before any <linux/...> header that pulls in <linux/if.h>: in that order the
// kernel header leaves glibc's definitions alone.
#include <net/if.h>

#include <fcntl.h>
#include <linux/if_tun.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::backends {

class tap {
public:
  static constexpr int vnet_header_size = 12;

  // Attaches to the tap `name`, creating it when it does not exist (which needs
  // CAP_NET_ADMIN). A tap created here is not persistent: the kernel removes it when this
  // object closes its descriptor, so no exit path can leave it behind.
  explicit tap(const std::string& name) : name_(name) {
    if (name.empty() || name.size() >= IFNAMSIZ) {
      throw compactor::error(fmt::format("tap name '{}' is empty or longer than {} bytes", name,
                                         IFNAMSIZ - 1));
    }
    created_ = ::if_nametoindex(name.c_str()) == 0;

    file_.reset(::open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC));
    if (!file_) {
      throw_errno("open /dev/net/tun");
    }
    ifreq request{};
    std::strncpy(request.ifr_name, name.c_str(), IFNAMSIZ - 1);
    request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR;
    if (::ioctl(file_.get(), TUNSETIFF, &request) < 0) {
      throw_errno(fmt::format("TUNSETIFF {} (a tap needs CAP_NET_ADMIN to be created, or an "
                              "existing tap owned by this user)",
                              name));
    }
    int header_size = vnet_header_size;
    check_syscall(::ioctl(file_.get(), TUNSETVNETHDRSZ, &header_size),
                  "TUNSETVNETHDRSZ " + name);
    set_offloads(0);
  }

  [[nodiscard]] int fd() const noexcept { return file_.get(); }
  [[nodiscard]] const std::string& name() const noexcept { return name_; }
  // Whether this object created the interface (and so its closing removes it).
  [[nodiscard]] bool created() const noexcept { return created_; }

  // Which offloads the kernel may hand us in frames for the guest: TUN_F_CSUM (partial
  // checksums), TUN_F_TSO4, TUN_F_TSO6 (large segments). Only what the guest accepted.
  void set_offloads(unsigned flags) {
    check_syscall(::ioctl(file_.get(), TUNSETOFFLOAD, flags), "TUNSETOFFLOAD " + name_);
  }

  // Reads one frame (header included) into `buffers`. Returns its size, or 0 when no frame
  // is waiting. A frame larger than the buffers is truncated by the kernel.
  std::size_t receive(const std::vector<iovec>& buffers) {
    for (;;) {
      const ssize_t size = ::readv(file_.get(), buffers.data(), static_cast<int>(buffers.size()));
      if (size >= 0) {
        return static_cast<std::size_t>(size);
      }
      if (errno == EAGAIN) {
        return 0;
      }
      if (errno != EINTR) {
        throw_errno("read from tap " + name_);
      }
    }
  }

  // Writes one frame (header included). Returns false when the kernel refused it (a
  // malformed header from the guest, for instance), which is counted by the device.
  bool send(const std::vector<iovec>& buffers) {
    for (;;) {
      const ssize_t size =
          ::writev(file_.get(), buffers.data(), static_cast<int>(buffers.size()));
      if (size >= 0) {
        return true;
      }
      if (errno != EINTR) {
        return false;
      }
    }
  }

private:
  std::string name_;
  bool created_ = false;
  unique_fd file_;
};

} // namespace compactor::backends
