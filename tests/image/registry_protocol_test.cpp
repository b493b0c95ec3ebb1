// The registry client's protocol handling against a registry stand-in on loopback that this
// test serves itself: Bearer tokens obtained with Basic credentials from the Docker config,
// retries after a dropped connection and a 503, and a redirect to blob storage on another
// host that must not receive the registry's credentials.
#include <catch2/catch.hpp>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <thread>

#include <compactor/image/resolve.hpp>
#include <compactor/support/unique_fd.hpp>

#include "test_image.hpp"

using namespace compactor;
using namespace compactor::testing;

namespace {

struct http_exchange {
  std::string method;
  std::string target;                         // path and query
  std::map<std::string, std::string> headers; // names in lower case
};

struct http_answer {
  int status = 200;
  std::vector<std::string> headers;
  std::string body;
  bool drop = false; // close the connection without answering
};

// A one-request-per-connection HTTP/1.1 server on a loopback address, run on a thread.
class loopback_server {
public:
  using handler = std::function<http_answer(const http_exchange&)>;

  loopback_server(const char* address, handler handle) : handle_(std::move(handle)) {
    listener_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    REQUIRE(listener_);
    sockaddr_in where{};
    where.sin_family = AF_INET;
    REQUIRE(::inet_pton(AF_INET, address, &where.sin_addr) == 1);
    REQUIRE(::bind(listener_.get(), reinterpret_cast<sockaddr*>(&where), sizeof where) == 0);
    REQUIRE(::listen(listener_.get(), 16) == 0);
    socklen_t length = sizeof where;
    REQUIRE(::getsockname(listener_.get(), reinterpret_cast<sockaddr*>(&where), &length) == 0);
    address_ = fmt::format("{}:{}", address, ntohs(where.sin_port));
    thread_ = std::thread([this] { serve(); });
  }
  loopback_server(const loopback_server&) = delete;
  loopback_server& operator=(const loopback_server&) = delete;
  ~loopback_server() {
    stop_ = true;
    thread_.join();
  }

  [[nodiscard]] const std::string& address() const { return address_; }

private:
  void serve() {
    while (!stop_) {
      pollfd ready{listener_.get(), POLLIN, 0};
      if (::poll(&ready, 1, 50) <= 0) {
        continue;
      }
      unique_fd connection(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (connection) {
        answer(connection.get());
      }
    }
  }

  void answer(int fd) {
    std::string request;
    char buffer[4096];
    while (request.find("\r\n\r\n") == std::string::npos) {
      const ssize_t got = ::recv(fd, buffer, sizeof buffer, 0);
      if (got <= 0) {
        return;
      }
      request.append(buffer, static_cast<std::size_t>(got));
    }
    http_exchange exchange;
    std::size_t line_end = request.find("\r\n");
    const auto first = request.substr(0, line_end);
    exchange.method = first.substr(0, first.find(' '));
    exchange.target = first.substr(first.find(' ') + 1, first.rfind(' ') - first.find(' ') - 1);
    while (true) {
      const auto start = line_end + 2;
      line_end = request.find("\r\n", start);
      if (line_end == start || line_end == std::string::npos) {
        break;
      }
      const auto line = request.substr(start, line_end - start);
      auto name = line.substr(0, line.find(':'));
      std::ranges::transform(name, name.begin(), [](unsigned char c) { return std::tolower(c); });
      exchange.headers[name] = std::string(image::detail::trim(line.substr(line.find(':') + 1)));
    }

    const auto reply = handle_(exchange);
    if (reply.drop) {
      return;
    }
    std::string text = fmt::format("HTTP/1.1 {} X\r\nContent-Length: {}\r\nConnection: close\r\n",
                                   reply.status, reply.body.size());
    for (const auto& header : reply.headers) {
      text += header + "\r\n";
    }
    text += "\r\n" + reply.body;
    for (std::size_t sent = 0; sent < text.size();) {
      const ssize_t put = ::send(fd, text.data() + sent, text.size() - sent, MSG_NOSIGNAL);
      if (put <= 0) {
        return;
      }
      sent += static_cast<std::size_t>(put);
    }
  }

  handler handle_;
  unique_fd listener_;
  std::string address_;
  std::atomic<bool> stop_ = false;
  std::thread thread_;
};

// What the stand-in registry and blob store saw.
struct observations {
  std::mutex mutex;
  std::map<std::string, int> blob_requests;       // digest -> requests to the registry
  std::vector<std::string> storage_authorization; // Authorization seen by blob storage
  std::vector<std::string> token_authorization;
  int storage_requests = 0;
};

} // namespace

TEST_CASE("registry protocol: Bearer token, retries, and redirects that drop credentials",
          "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  std::map<std::string, const blob*> blobs;
  for (const auto& layer : made.layers) {
    blobs[layer.digest] = &layer;
  }
  blobs[made.config.digest] = &made.config;
  const std::string basic = image::detail::base64("tester:s3cret");
  observations seen;

  loopback_server storage("127.0.0.2", [&](const http_exchange& request) {
    const std::lock_guard lock(seen.mutex);
    ++seen.storage_requests;
    if (const auto it = request.headers.find("authorization"); it != request.headers.end()) {
      seen.storage_authorization.push_back(it->second);
    }
    const auto digest = "sha256:" + request.target.substr(request.target.rfind('/') + 1);
    if (!blobs.contains(digest)) {
      return http_answer{404, {}, "", false};
    }
    return http_answer{
        200, {"Content-Type: application/octet-stream"}, blobs[digest]->bytes, false};
  });

  std::string registry_address;
  loopback_server registry("127.0.0.1", [&](const http_exchange& request) {
    const std::lock_guard lock(seen.mutex);
    if (request.target.starts_with("/token?")) {
      const auto it = request.headers.find("authorization");
      seen.token_authorization.push_back(it == request.headers.end() ? "" : it->second);
      if (it == request.headers.end() || it->second != "Basic " + basic ||
          request.target.find("scope=repository%3Acompactor-test%2Fbusybox%3Apull") ==
              std::string::npos) {
        return http_answer{401, {}, R"({"details":"bad credentials"})", false};
      }
      return http_answer{200, {"Content-Type: application/json"}, R"({"token":"t0ken"})", false};
    }
    const auto auth = request.headers.find("authorization");
    if (auth == request.headers.end() || auth->second != "Bearer t0ken") {
      return http_answer{
          401,
          {fmt::format(R"(WWW-Authenticate: Bearer realm="http://{}/token",service="stand-in",)"
                       R"(scope="repository:compactor-test/busybox:pull")",
                       registry_address)},
          R"({"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]})",
          false};
    }
    const std::string prefix = "/v2/compactor-test/busybox/";
    if (request.target == prefix + "manifests/v1") {
      return http_answer{200,
                         {"Content-Type: " + made.manifest.media_type,
                          "Docker-Content-Digest: " + made.manifest.digest},
                         made.manifest.bytes,
                         false};
    }
    if (request.target.starts_with(prefix + "blobs/")) {
      const auto digest = request.target.substr(prefix.size() + 6);
      switch (++seen.blob_requests[digest]) {
      case 1:
        return http_answer{0, {}, "", true};
      case 2:
        return http_answer{503, {"Retry-After: 0"}, "busy", false};
      default:
        return http_answer{307,
                           {fmt::format("Location: http://{}/storage/{}", storage.address(),
                                        image::digest_hex(digest))},
                           "",
                           false};
      }
    }
    return http_answer{404, {}, R"({"errors":[{"code":"NOT_FOUND","message":"unknown"}]})", false};
  });
  registry_address = registry.address();

  image::resolve_options options;
  options.use_daemon = false;
  options.cache = scratch.path() / "cache";
  options.registry.first_backoff = std::chrono::milliseconds(5);
  options.registry.docker_config = scratch.path() / "config.json";
  const auto name = fmt::format("docker://{}/compactor-test/busybox:v1", registry.address());

  SECTION("without credentials the token service refuses") {
    CHECK_THROWS_WITH(image::resolve(name, options),
                      "the token service of " + registry.address() + " answered 401");
  }

  SECTION("with credentials everything arrives, verified") {
    write_file(options.registry.docker_config,
               fmt::format(R"({{"auths":{{"{}":{{"auth":"{}"}}}}}})", registry.address(), basic));
    const auto got = image::resolve(name, options);
    CHECK(got.manifest_digest == made.manifest.digest);
    CHECK(got.config_digest == made.config.digest);
    REQUIRE(got.layers.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
      CHECK(read_layer(got.layers[i]) == made.layers[i].bytes);
    }

    const std::lock_guard lock(seen.mutex);
    CHECK(seen.token_authorization == std::vector<std::string>{"Basic " + basic});
    // Each blob: a dropped connection, a 503, then the redirect.
    CHECK(seen.blob_requests.size() == 4);
    for (const auto& [digest, count] : seen.blob_requests) {
      INFO(digest);
      CHECK(count == 3);
    }
    CHECK(seen.storage_requests == 4);
    CHECK(seen.storage_authorization.empty());
  }
}

TEST_CASE("registry protocol: challenges, Docker config auths, URLs", "[unit]") {
  const auto bearer = image::detail::parse_challenge(
      R"(Bearer realm="https://auth.example.com/token",service="registry.example.com",)"
      R"(scope="repository:a/b:pull,push")");
  CHECK(bearer.scheme == "bearer");
  CHECK(bearer.params.at("realm") == "https://auth.example.com/token");
  CHECK(bearer.params.at("service") == "registry.example.com");
  CHECK(bearer.params.at("scope") == "repository:a/b:pull,push");
  CHECK(image::detail::parse_challenge(R"(Basic realm="x \"y\"")").params.at("realm") == "x \"y\"");

  temporary_directory scratch;
  const auto config = scratch.path() / "config.json";
  write_file(config, R"({"auths":{
      "https://index.docker.io/v1/":{"auth":"aHViOmh1Yg=="},
      "https://ghcr.io":{"username":"me","password":"pw"},
      "localhost:5000":{"auth":"bG9jYWw6bG9jYWw="}},
      "credsStore":"desktop"})");
  CHECK(image::find_registry_auth(config, "docker.io") == "aHViOmh1Yg==");
  CHECK(image::find_registry_auth(config, "ghcr.io") == image::detail::base64("me:pw"));
  CHECK(image::find_registry_auth(config, "localhost:5000") == "bG9jYWw6bG9jYWw=");
  CHECK_FALSE(image::find_registry_auth(config, "quay.io"));
  CHECK_FALSE(image::find_registry_auth(scratch.path() / "missing.json", "docker.io"));
  CHECK(image::detail::base64("a") == "YQ==");

  CHECK(image::registry_host("docker.io") == "registry-1.docker.io");
  CHECK(image::is_loopback_domain("localhost:5000"));
  CHECK(image::is_loopback_domain("127.0.0.1:5000"));
  CHECK(image::is_loopback_domain("[::1]:5000"));
  CHECK_FALSE(image::is_loopback_domain("localhost.example.com"));
  CHECK_FALSE(image::is_loopback_domain("ghcr.io"));

  CHECK(image::detail::url_origin("https://a.example:8443/v2/x?y") == "https://a.example:8443");
  CHECK(image::detail::resolve_location("https://a/v2/x/blobs/d", "https://s3/b?sig=1") ==
        "https://s3/b?sig=1");
  CHECK(image::detail::resolve_location("https://a/v2/x/blobs/d", "/other/p") ==
        "https://a/other/p");
  CHECK(image::detail::resolve_location("https://a/v2/x/blobs/d", "//cdn/p") == "https://cdn/p");
  CHECK(image::detail::resolve_location("https://a/v2/x/blobs/d", "e") == "https://a/v2/x/blobs/e");
}

TEST_CASE("docker daemon socket: DOCKER_HOST when it is unix://, else the usual path", "[unit]") {
  const char* saved = std::getenv("DOCKER_HOST");
  const std::string saved_value = saved != nullptr ? saved : "";

  ::setenv("DOCKER_HOST", "unix:///run/other/docker.sock", 1);
  CHECK(image::default_docker_socket() == "/run/other/docker.sock");
  ::setenv("DOCKER_HOST", "tcp://127.0.0.1:2375", 1);
  CHECK_THROWS_WITH(image::default_docker_socket(), Catch::Contains("is not a unix:// socket"));
  ::unsetenv("DOCKER_HOST");
  CHECK(image::default_docker_socket() == "/var/run/docker.sock");
  CHECK_FALSE(image::docker_daemon_answers("/nonexistent/docker.sock"));

  if (saved != nullptr) {
    ::setenv("DOCKER_HOST", saved_value.c_str(), 1);
  }
}
