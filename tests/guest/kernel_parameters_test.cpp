#include <catch2/catch.hpp>

#include <compactor/guest/kernel_parameters.hpp>

using namespace compactor::guest;

TEST_CASE("kernel parameters: network arguments parse back from a whole command line",
          "[unit]") {
  network_parameters network;
  network.address = "10.0.2.15";
  network.prefix_length = 24;
  network.gateway = "10.0.2.2";
  network.dns = {"10.0.2.3", "2001:db8::53"};

  const auto arguments = network_kernel_arguments(network);
  CHECK(arguments ==
        "compactor.ip=10.0.2.15/24 compactor.gw=10.0.2.2 compactor.dns=10.0.2.3,2001:db8::53");
  const auto command_line =
      "console=ttyS0 " + init_kernel_arguments() + " quiet " + arguments + " panic=-1\n";
  CHECK(parse_network_parameters(command_line) == network);
}

TEST_CASE("kernel parameters: the init is started from /.compactor", "[unit]") {
  CHECK(init_kernel_arguments() == "rdinit=/.compactor/init");
  CHECK_THAT(base_kernel_arguments(), Catch::EndsWith(" rdinit=/.compactor/init"));
}

TEST_CASE("kernel parameters: no compactor arguments means no network configuration",
          "[unit]") {
  const auto network = parse_network_parameters("console=ttyS0 ip=1.2.3.4 compactor.other=1");
  CHECK(network.address.empty());
  CHECK(network.gateway.empty());
  CHECK(network.dns.empty());
  CHECK(network_kernel_arguments(network).empty());
}

TEST_CASE("kernel parameters: an address without a prefix is a host address", "[unit]") {
  CHECK(parse_network_parameters("compactor.ip=192.168.1.5").prefix_length == 32);
  CHECK(parse_network_parameters("compactor.ip=192.168.1.5/0").prefix_length == 0);
}

TEST_CASE("kernel parameters: malformed values are refused naming the argument", "[unit]") {
  using Catch::Contains;
  CHECK_THROWS_WITH(parse_network_parameters("compactor.ip=10.0.0/24"),
                    Contains("compactor.ip"));
  CHECK_THROWS_WITH(parse_network_parameters("compactor.ip=10.0.0.1/33"),
                    Contains("prefix length"));
  CHECK_THROWS_WITH(parse_network_parameters("compactor.ip=10.0.0.1/x"),
                    Contains("ADDRESS/PREFIX"));
  CHECK_THROWS_WITH(parse_network_parameters("compactor.gw=10.0.0.1"),
                    Contains("needs compactor.ip"));
  CHECK_THROWS_WITH(parse_network_parameters("compactor.dns=1.1.1.1,nameserver"),
                    Contains("compactor.dns"));
  network_parameters bad;
  bad.address = "::1";
  CHECK_THROWS_WITH(network_kernel_arguments(bad), Contains("not an IPv4 address"));
}
