// The guest's kernel command-line conventions, shared by the host that boots a guest and the
// init that reads /proc/cmdline.
//
//   console=ttyS0 panic=-1 reboot=t        a panic or a reset ends the machine at once
//   rdinit=/.compactor/init                the init (see launch_config.hpp)
//   compactor.ip=10.0.2.15/24              eth0's IPv4 address and prefix length
//   compactor.gw=10.0.2.2                  the default route (needs compactor.ip)
//   compactor.dns=10.0.2.3,1.1.1.1         name servers written to /etc/resolv.conf
//
// The kernel keeps parameters with a dot in their name away from the init's arguments and
// environment, so these reach only the init's parser. Without compactor.ip, eth0 stays down;
// without compactor.dns, the image's /etc/resolv.conf is left as it is.
#pragma once

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <string>
#include <string_view>
#include <vector>

#include <compactor/guest/launch_config.hpp>
#include <compactor/support/error.hpp>

namespace compactor::guest {

struct network_parameters {
  std::string address;             // dotted IPv4; empty: no network configuration
  unsigned prefix_length = 24;     // 0-32
  std::string gateway;             // dotted IPv4; empty: no default route
  std::vector<std::string> dns;    // dotted IPv4 or IPv6 name servers

  bool operator==(const network_parameters&) const = default;
};

namespace detail {

inline bool is_ipv4(const std::string& text) {
  in_addr parsed{};
  return ::inet_pton(AF_INET, text.c_str(), &parsed) == 1;
}

inline bool is_ip(const std::string& text) {
  in6_addr parsed{};
  return is_ipv4(text) || ::inet_pton(AF_INET6, text.c_str(), &parsed) == 1;
}

inline void check_network_parameters(const network_parameters& network) {
  if (!network.address.empty() && !is_ipv4(network.address)) {
    throw error("compactor.ip: '" + network.address + "' is not an IPv4 address");
  }
  if (network.prefix_length > 32) {
    throw error("compactor.ip: the prefix length must be 0 to 32");
  }
  if (!network.gateway.empty()) {
    if (!is_ipv4(network.gateway)) {
      throw error("compactor.gw: '" + network.gateway + "' is not an IPv4 address");
    }
    if (network.address.empty()) {
      throw error("compactor.gw needs compactor.ip: a gateway without an address is unreachable");
    }
  }
  for (const auto& server : network.dns) {
    if (!is_ip(server)) {
      throw error("compactor.dns: '" + server + "' is not an IP address");
    }
  }
}

} // namespace detail

// The kernel arguments that start the init from the initramfs.
[[nodiscard]] inline std::string init_kernel_arguments() {
  return std::string("rdinit=") + init_path;
}

// The arguments every guest boots with, without the device entries that the VMM adds
// (virtio_mmio.device=...).
[[nodiscard]] inline std::string base_kernel_arguments() {
  return "console=ttyS0 panic=-1 reboot=t " + init_kernel_arguments();
}

// The kernel arguments for `network`, separated by spaces; empty when there is no address and
// no name server. Throws compactor::error for a malformed address.
[[nodiscard]] inline std::string network_kernel_arguments(const network_parameters& network) {
  detail::check_network_parameters(network);
  std::string result;
  const auto add = [&](const std::string& argument) {
    result += result.empty() ? "" : " ";
    result += argument;
  };
  if (!network.address.empty()) {
    add("compactor.ip=" + network.address + "/" + std::to_string(network.prefix_length));
  }
  if (!network.gateway.empty()) {
    add("compactor.gw=" + network.gateway);
  }
  if (!network.dns.empty()) {
    std::string servers;
    for (const auto& server : network.dns) {
      servers += (servers.empty() ? "" : ",") + server;
    }
    add("compactor.dns=" + servers);
  }
  return result;
}

// Reads the compactor.* network arguments out of a whole kernel command line (/proc/cmdline).
// Other arguments are ignored; the last occurrence of an argument wins, as for the kernel's own.
// Throws compactor::error naming the malformed argument.
[[nodiscard]] inline network_parameters parse_network_parameters(std::string_view command_line) {
  network_parameters network;
  std::size_t position = 0;
  while (position < command_line.size()) {
    const auto end = std::min(command_line.find_first_of(" \t\n", position), command_line.size());
    const auto argument = command_line.substr(position, end - position);
    position = end + 1;

    const auto equals = argument.find('=');
    if (equals == std::string_view::npos) {
      continue;
    }
    const auto name = argument.substr(0, equals);
    const auto value = argument.substr(equals + 1);
    if (name == "compactor.ip") {
      const auto slash = value.find('/');
      network.address = std::string(value.substr(0, slash));
      network.prefix_length = 32;
      if (slash != std::string_view::npos) {
        const auto digits = value.substr(slash + 1);
        const auto [rest, failure] = std::from_chars(digits.data(), digits.data() + digits.size(),
                                                     network.prefix_length);
        if (failure != std::errc() || rest != digits.data() + digits.size() || digits.empty()) {
          throw error("compactor.ip: '" + std::string(value) + "' is not ADDRESS/PREFIX");
        }
      }
    } else if (name == "compactor.gw") {
      network.gateway = std::string(value);
    } else if (name == "compactor.dns") {
      network.dns.clear();
      std::size_t start = 0;
      while (start <= value.size()) {
        const auto comma = std::min(value.find(',', start), value.size());
        if (comma > start) {
          network.dns.emplace_back(value.substr(start, comma - start));
        }
        start = comma + 1;
      }
    }
  }
  detail::check_network_parameters(network);
  return network;
}

} // namespace compactor::guest
