#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <compactor/net/http_client.hpp>
#include <compactor/support/unique_fd.hpp>

using namespace compactor::net;

namespace {

// A loopback port on which nothing listens: bound, never listened on, then closed.
int unused_loopback_port() {
  compactor::unique_fd socket(::socket(AF_INET, SOCK_STREAM, 0));
  REQUIRE(socket);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(::bind(socket.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) == 0);
  socklen_t length = sizeof address;
  REQUIRE(::getsockname(socket.get(), reinterpret_cast<sockaddr*>(&address), &length) == 0);
  return ntohs(address.sin_port);
}

} // namespace

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
