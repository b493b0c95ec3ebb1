// The services that scripts/test.sh starts for the tests, found through the variables it sets.
// A test that calls these fails with the reason when the service is missing.
#pragma once

#include <catch2/catch.hpp>

#include <string>

#include "requirements.hpp"

namespace compactor::testing {

// The unix socket of the test dockerd.
inline std::string docker_socket() {
  const auto socket = service_variable("COMPACTOR_TEST_DOCKER_SOCKET");
  if (!socket) {
    FAIL(service_missing_message("dockerd", "COMPACTOR_TEST_DOCKER_SOCKET"));
  }
  return *socket;
}

// host:port of the test registry on loopback (plain HTTP).
inline std::string registry_address() {
  const auto address = service_variable("COMPACTOR_TEST_REGISTRY");
  if (!address) {
    FAIL(service_missing_message("docker-registry", "COMPACTOR_TEST_REGISTRY"));
  }
  return *address;
}

} // namespace compactor::testing
