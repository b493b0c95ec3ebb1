// The host side of a tap for tests: a raw packet socket bound to the interface, for one
// EtherType, that brings the interface up. What a guest sends through the tap, it receives;
// what it sends, the guest receives.
#pragma once

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <cstdint>
#include <cstring>
#include <string>

#include <catch2/catch.hpp>

#include <compactor/support/unique_fd.hpp>

namespace compactor::testing {

class wire {
public:
  wire(const std::string& interface, std::uint16_t ethertype) {
    socket_.reset(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ethertype)));
    REQUIRE(socket_);
    ifreq request{};
    std::strncpy(request.ifr_name, interface.c_str(), IFNAMSIZ - 1);
    REQUIRE(::ioctl(socket_.get(), SIOCGIFFLAGS, &request) == 0);
    request.ifr_flags |= IFF_UP;
    REQUIRE(::ioctl(socket_.get(), SIOCSIFFLAGS, &request) == 0);
    sockaddr_ll address{};
    address.sll_family = AF_PACKET;
    address.sll_protocol = htons(ethertype);
    address.sll_ifindex = static_cast<int>(::if_nametoindex(interface.c_str()));
    REQUIRE(::bind(socket_.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
    timeval timeout{2, 0};
    ::setsockopt(socket_.get(), SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
  }

  void send(const std::string& frame) {
    REQUIRE(::send(socket_.get(), frame.data(), frame.size(), 0) ==
            static_cast<ssize_t>(frame.size()));
  }

  std::string receive() {
    std::string frame(2048, '\0');
    const ssize_t size = ::recv(socket_.get(), frame.data(), frame.size(), 0);
    REQUIRE(size > 0);
    frame.resize(static_cast<std::size_t>(size));
    return frame;
  }

private:
  compactor::unique_fd socket_;
};


} // namespace compactor::testing
