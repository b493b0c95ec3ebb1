// Network set-up with the classic interface ioctls: loopback up, eth0's address and default
// route from the kernel command line (kernel_parameters.hpp), and the files a container's
// resolver reads (/etc/resolv.conf, /etc/hosts, /etc/hostname).
#pragma once

#include <arpa/inet.h>
#include <net/if.h>
#include <net/route.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <compactor/guest/kernel_parameters.hpp>
#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::init {

namespace detail {

inline sockaddr ipv4_socket_address(const std::string& address) {
  sockaddr_in result{};
  result.sin_family = AF_INET;
  if (::inet_pton(AF_INET, address.c_str(), &result.sin_addr) != 1) {
    throw error("'" + address + "' is not an IPv4 address");
  }
  sockaddr generic{};
  std::memcpy(&generic, &result, sizeof result);
  return generic;
}

inline sockaddr ipv4_netmask(unsigned prefix_length) {
  sockaddr_in result{};
  result.sin_family = AF_INET;
  result.sin_addr.s_addr =
      prefix_length == 0 ? 0 : htonl(~std::uint32_t{0} << (32 - prefix_length));
  sockaddr generic{};
  std::memcpy(&generic, &result, sizeof result);
  return generic;
}

inline ifreq interface_request(const char* name) {
  ifreq request{};
  std::strncpy(request.ifr_name, name, IFNAMSIZ - 1);
  return request;
}

inline void bring_up(int socket, const char* name) {
  auto request = interface_request(name);
  if (::ioctl(socket, SIOCGIFFLAGS, &request) != 0) {
    if (errno == ENODEV) {
      throw error(std::string("the guest has no network interface ") + name +
                  " (is a virtio-net device attached?)");
    }
    throw_errno(std::string("SIOCGIFFLAGS ") + name);
  }
  request.ifr_flags = static_cast<short>(request.ifr_flags | IFF_UP);
  check_syscall(::ioctl(socket, SIOCSIFFLAGS, &request), std::string("SIOCSIFFLAGS ") + name);
}

// Writes a whole file, replacing a symbolic link (such as resolv.conf pointing into a
// systemd-resolved directory that does not exist in the guest) rather than following it.
inline void replace_file(const std::string& path, const std::string& content) {
  std::error_code ignored;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path(), ignored);
  if (std::filesystem::is_symlink(path, ignored)) {
    std::filesystem::remove(path, ignored);
  }
  std::ofstream file(path, std::ios::trunc);
  file << content;
  file.close();
  if (!file) {
    throw error("cannot write " + path);
  }
}

} // namespace detail

inline void configure_network(const guest::network_parameters& network,
                              const std::string& hostname) {
  const unique_fd socket(check_syscall(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0),
                                       "socket AF_INET"));
  detail::bring_up(socket.get(), "lo");

  if (!network.address.empty()) {
    auto request = detail::interface_request("eth0");
    request.ifr_addr = detail::ipv4_socket_address(network.address);
    if (::ioctl(socket.get(), SIOCSIFADDR, &request) != 0) {
      if (errno == ENODEV) {
        throw error("compactor.ip is set but the guest has no eth0 (no virtio-net device)");
      }
      throw_errno("SIOCSIFADDR eth0");
    }
    request.ifr_netmask = detail::ipv4_netmask(network.prefix_length);
    check_syscall(::ioctl(socket.get(), SIOCSIFNETMASK, &request), "SIOCSIFNETMASK eth0");
    detail::bring_up(socket.get(), "eth0");
  }

  if (!network.gateway.empty()) {
    rtentry route{};
    route.rt_dst = detail::ipv4_socket_address("0.0.0.0");
    route.rt_genmask = detail::ipv4_netmask(0);
    route.rt_gateway = detail::ipv4_socket_address(network.gateway);
    route.rt_flags = RTF_UP | RTF_GATEWAY;
    check_syscall(::ioctl(socket.get(), SIOCADDRT, &route), "SIOCADDRT default via " +
                  network.gateway);
  }

  if (!network.dns.empty()) {
    std::string resolv_conf;
    for (const auto& server : network.dns) {
      resolv_conf += "nameserver " + server + "\n";
    }
    detail::replace_file("/etc/resolv.conf", resolv_conf);
  }

  // The same entries `docker run` writes.
  std::string hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n";
  hosts += (network.address.empty() ? "127.0.1.1" : network.address) + "\t" + hostname + "\n";
  detail::replace_file("/etc/hosts", hosts);
  detail::replace_file("/etc/hostname", hostname + "\n");
}

} // namespace compactor::init
