#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <compactor/net/http_client.hpp>
#include <compactor/support/unique_fd.hpp>

#include "../support/loopback.hpp"

using namespace compactor::net;

using compactor::testing::unused_loopback_port;

TEST_CASE("http client: a refused connection is a transfer error naming the URL", "[unit]") {
  http_client client;
  http_request request;
  request.url = "http://127.0.0.1:" + std::to_string(unused_loopback_port()) + "/v2/";

  try {
    client.perform(request);
    FAIL("the request should have failed");
  } catch (const transfer_error& failure) {
    CHECK(failure.code() == CURLE_COULDNT_CONNECT);
    CHECK_THAT(failure.what(), Catch::StartsWith("GET " + request.url));
  }
}

TEST_CASE("http client: a missing unix socket is a transfer error", "[unit]") {
  http_client client;
  http_request request;
  request.url = "http://docker/_ping";
  request.unix_socket = "/nonexistent/docker.sock";

  CHECK_THROWS_AS(client.perform(request), transfer_error);
}

TEST_CASE("http response: header lookup ignores case and takes the last value", "[unit]") {
  http_response response;
  response.headers = {{"Content-Type", "text/plain"}, {"WWW-Authenticate", "Basic"},
                      {"www-authenticate", "Bearer realm=\"x\""}};

  CHECK(response.header("content-type") == "text/plain");
  CHECK(response.header("Www-Authenticate") == "Bearer realm=\"x\"");
  CHECK_FALSE(response.header("Location"));
}
