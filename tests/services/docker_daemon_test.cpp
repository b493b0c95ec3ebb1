// The test dockerd answers over its own unix socket.
#include <catch2/catch.hpp>

#include <nlohmann/json.hpp>

#include <compactor/net/http_client.hpp>

#include "../support/services.hpp"

using compactor::net::http_client;
using compactor::net::http_request;

TEST_CASE("dockerd: _ping answers OK with the API version over the unix socket", "[services]") {
  http_client client;
  http_request request;
  request.url = "http://docker/_ping";
  request.unix_socket = compactor::testing::docker_socket();

  const auto response = client.perform(request);

  CHECK(response.status == 200);
  CHECK(response.body == "OK");
  REQUIRE(response.header("api-version"));
  CHECK_FALSE(response.header("Api-Version")->empty());
}

TEST_CASE("dockerd: /version names the engine and its storage driver is vfs", "[services]") {
  http_client client;
  http_request request;
  request.unix_socket = compactor::testing::docker_socket();

  request.url = "http://docker/version";
  const auto version = nlohmann::json::parse(client.perform(request).body);
  CHECK(version.at("Os") == "linux");
  CHECK_FALSE(version.at("ApiVersion").get<std::string>().empty());

  request.url = "http://docker/info";
  const auto info = nlohmann::json::parse(client.perform(request).body);
  CHECK(info.at("Driver") == "vfs");
}

TEST_CASE("dockerd: an unknown image is a 404 with the daemon's message", "[services]") {
  http_client client;
  http_request request;
  request.unix_socket = compactor::testing::docker_socket();
  request.url = "http://docker/images/compactor-no-such-image:never/json";

  const auto response = client.perform(request);

  CHECK(response.status == 404);
  CHECK_THAT(nlohmann::json::parse(response.body).at("message").get<std::string>(),
             Catch::Contains("No such image"));
}
