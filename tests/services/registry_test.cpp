// The test registry answers on loopback.
#include <catch2/catch.hpp>

#include <stdexcept>

#include <nlohmann/json.hpp>

#include <compactor/net/http_client.hpp>

#include "../support/services.hpp"

using compactor::net::http_client;
using compactor::net::http_request;

TEST_CASE("registry: /v2/ answers with the distribution API version header", "[services]") {
  http_client client;
  http_request request;
  request.url = "http://" + compactor::testing::registry_address() + "/v2/";

  const auto response = client.perform(request);

  CHECK(response.status == 200);
  CHECK(response.header("Docker-Distribution-API-Version") == "registry/2.0");
}

TEST_CASE("registry: a 2xx body streams to the sink, an error body stays in the response",
          "[services]") {
  http_client client;
  http_request request;
  const auto base = "http://" + compactor::testing::registry_address();

  std::string streamed;
  request.url = base + "/v2/_catalog";
  const auto catalog = client.perform(request, [&](std::string_view chunk) {
    streamed.append(chunk);
  });
  CHECK(catalog.status == 200);
  CHECK(catalog.body.empty());
  CHECK(nlohmann::json::parse(streamed).contains("repositories"));

  streamed.clear();
  request.url = base + "/v2/compactor/no-such-repository/manifests/latest";
  const auto missing = client.perform(request, [&](std::string_view chunk) {
    streamed.append(chunk);
  });
  CHECK(missing.status == 404);
  CHECK(streamed.empty());
  CHECK(nlohmann::json::parse(missing.body).at("errors").at(0).at("code") ==
        "MANIFEST_UNKNOWN");
}

TEST_CASE("registry: an exception from the sink aborts the transfer and reaches the caller",
          "[services]") {
  http_client client;
  http_request request;
  request.url = "http://" + compactor::testing::registry_address() + "/v2/_catalog";

  CHECK_THROWS_WITH(
      client.perform(request, [](std::string_view) { throw std::runtime_error("sink full"); }),
      "sink full");

  // The handle stays usable after an aborted transfer.
  CHECK(client.perform(request).status == 200);
}
