// Pulls from the test registry through a fault-injecting proxy (tests/support/fault_proxy.hpp):
// each fault ends either in the image a direct pull gives or in one clear error naming what
// failed, with nothing half-written left in the blob cache.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <exception>
#include <filesystem>
#include <functional>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <compactor/image/resolve.hpp>
#include <compactor/net/http_client.hpp>

#include "../image/test_image.hpp"
#include "../support/fault_proxy.hpp"
#include "../support/services.hpp"

using namespace compactor;
using namespace compactor::testing;
using namespace std::chrono_literals;

namespace {

constexpr std::string_view repository = "compactor-test/faults";

// The test image as a direct pull from the registry gives it.
struct expected_image {
  std::string manifest_digest;
  std::string config_digest;
  std::vector<std::string> layer_digests;
};

image::resolve_options options_in(const fs::path& directory) {
  image::resolve_options options;
  options.use_daemon = false;
  options.cache = directory / "cache";
  options.registry.docker_config = directory / "no-docker-config.json";
  options.registry.attempts = 3;
  options.registry.first_backoff = 20ms;
  return options;
}

// Pushed once per run by skopeo, then pulled directly (no proxy) into a cache of its own.
const expected_image& pushed_image() {
  static const expected_image expected = [] {
    temporary_directory scratch;
    const auto made = make_busybox_image(scratch.path() / "layout", "v1");
    const auto name = fmt::format("docker://{}/{}:v1", registry_address(), repository);
    require_command(fmt::format("skopeo --insecure-policy copy --quiet --dest-tls-verify=false "
                                "{} {}",
                                made.oci(), name));
    const auto direct = image::resolve(name, options_in(scratch.path()));
    expected_image result{direct.manifest_digest, direct.config_digest, {}};
    for (const auto& layer : direct.layers) {
      result.layer_digests.push_back(layer.digest);
      REQUIRE(image::sha256_of(read_layer(layer)) == layer.digest);
    }
    REQUIRE(result.layer_digests.size() == 3);
    return result;
  }();
  return expected;
}

std::string name_through(const fault_proxy& proxy) {
  return fmt::format("docker://{}/{}:v1", proxy.address(), repository);
}

// Resolves through the proxy and reads every layer, as an export would.
image::resolved_image pull(const fault_proxy& proxy, const image::resolve_options& options) {
  auto got = image::resolve(name_through(proxy), options);
  for (const auto& layer : got.layers) {
    static_cast<void>(read_layer(layer));
  }
  return got;
}

void check_same_image(const image::resolved_image& got, const expected_image& expected) {
  CHECK(got.manifest_digest == expected.manifest_digest);
  CHECK(got.config_digest == expected.config_digest);
  REQUIRE(got.layers.size() == expected.layer_digests.size());
  for (std::size_t i = 0; i < got.layers.size(); ++i) {
    INFO("layer " << i + 1);
    CHECK(image::sha256_of(read_layer(got.layers[i])) == expected.layer_digests[i]);
  }
}

// The message of what `pull` throws; it must be one line.
std::string failure_of(const std::function<void()>& pull) {
  try {
    pull();
  } catch (const std::exception& failure) {
    const std::string message = failure.what();
    INFO(message);
    CHECK(message.find('\n') == std::string::npos);
    return message;
  }
  FAIL("the pull should have failed");
  return {};
}

// Nothing half-written: no temporary file, no entry for the failed blob, and every entry
// holds the content its name promises.
void check_no_partial_blob(const fs::path& cache, const std::string& failed_digest) {
  if (fs::exists(cache / "tmp")) {
    CHECK(fs::is_empty(cache / "tmp"));
  }
  const auto blobs = cache / "blobs" / "sha256";
  CHECK_FALSE(fs::exists(blobs / std::string(image::digest_hex(failed_digest))));
  if (!fs::exists(blobs)) {
    return;
  }
  for (const auto& entry : fs::directory_iterator(blobs)) {
    INFO(entry.path());
    CHECK(image::sha256_of(read_file(entry.path())) ==
          "sha256:" + entry.path().filename().string());
  }
}

std::vector<int> statuses(const std::vector<proxied_request>& requests) {
  std::vector<int> result;
  for (const auto& request : requests) {
    result.push_back(request.status);
  }
  return result;
}

} // namespace

TEST_CASE("registry faults: content that does not match its digest or size fails naming it",
          "[services]") {
  const auto& expected = pushed_image();
  temporary_directory scratch;
  fault_proxy proxy(registry_address());
  const auto options = options_in(scratch.path());

  SECTION("a corrupt layer is refused once read, and not asked for again") {
    const auto& top = expected.layer_digests[2];
    proxy.add({fault_kind::corrupt, top, fault_rule::every_time});
    CHECK_THAT(failure_of([&] { pull(proxy, options); }),
               Catch::StartsWith("layer 3 does not match its digest: expected " + top + ", got "));
    CHECK(proxy.requests_for(top).size() == 1);
    check_no_partial_blob(options.cache, top);
  }

  SECTION("a layer longer than its descriptor says is refused as soon as it is") {
    const auto& top = expected.layer_digests[2];
    proxy.add({fault_kind::oversize, top, fault_rule::every_time});
    CHECK_THAT(
        failure_of([&] { pull(proxy, options); }),
        Catch::Matches("layer 3 " + top + " has more than the [0-9]+ bytes its descriptor says"));
    CHECK(proxy.requests_for(top).size() == 1);
    check_no_partial_blob(options.cache, top);
  }

  SECTION("a manifest longer than a manifest may be is refused") {
    proxy.add({fault_kind::oversize, "/manifests/v1", fault_rule::every_time});
    CHECK(failure_of([&] { pull(proxy, options); }) ==
          fmt::format("GET http://{}/v2/{}/manifests/v1: the answer is longer than {} bytes",
                      proxy.address(), repository, 16 << 20));
  }

  SECTION("a corrupt config is refused before any layer is read") {
    proxy.add({fault_kind::corrupt, expected.config_digest, fault_rule::every_time});
    CHECK_THAT(failure_of([&] { pull(proxy, options); }),
               Catch::StartsWith("the image config does not match its digest: expected " +
                                 expected.config_digest));
    check_no_partial_blob(options.cache, expected.config_digest);
    CHECK_FALSE(fs::exists(options.cache / "blobs"));
  }

  SECTION("a corrupt manifest is refused against the registry's Docker-Content-Digest") {
    proxy.add({fault_kind::corrupt, "/manifests/v1", fault_rule::every_time});
    CHECK_THAT(failure_of([&] { pull(proxy, options); }),
               Catch::StartsWith("the registry's manifest does not match its digest: expected " +
                                 expected.manifest_digest));
  }
}

TEST_CASE("registry faults: a body cut short is fetched again from the start; always cut "
          "short, it fails naming the layer",
          "[services]") {
  const auto& expected = pushed_image();
  temporary_directory scratch;
  fault_proxy proxy(registry_address());
  const auto options = options_in(scratch.path());
  const auto& first = expected.layer_digests[0];

  SECTION("once") {
    proxy.add({fault_kind::truncate, first});
    check_same_image(pull(proxy, options), expected);
    CHECK(statuses(proxy.requests_for(first)) == std::vector<int>{200, 200});
    CHECK(proxy.requests_for(first).at(0).fault == fault_kind::truncate);
  }

  SECTION("every time") {
    proxy.add({fault_kind::truncate, first, fault_rule::every_time});
    const auto message = failure_of([&] { pull(proxy, options); });
    CHECK_THAT(message, Catch::StartsWith(fmt::format("could not fetch layer 1 {} of {}/{} after "
                                                      "3 attempts: ",
                                                      first, proxy.address(), repository)));
    CHECK_THAT(message, Catch::Contains("bytes remaining to read"));
    CHECK(proxy.requests_for(first).size() == 3);
    check_no_partial_blob(options.cache, first);
  }
}

TEST_CASE("registry faults: a connection reset mid-blob is retried; always reset, it fails "
          "naming the layer",
          "[services]") {
  const auto& expected = pushed_image();
  temporary_directory scratch;
  fault_proxy proxy(registry_address());
  const auto options = options_in(scratch.path());
  const auto& second = expected.layer_digests[1];

  SECTION("once") {
    proxy.add({fault_kind::drop, second});
    check_same_image(pull(proxy, options), expected);
    CHECK(proxy.requests_for(second).size() == 2);
  }

  SECTION("every time") {
    proxy.add({fault_kind::drop, second, fault_rule::every_time});
    CHECK_THAT(failure_of([&] { pull(proxy, options); }),
               Catch::StartsWith(fmt::format("could not fetch layer 2 {} of {}/{} after 3 "
                                             "attempts: ",
                                             second, proxy.address(), repository)));
    CHECK(proxy.requests_for(second).size() == 3);
    check_no_partial_blob(options.cache, second);
  }
}

TEST_CASE("registry faults: a 401 Bearer challenge is answered with a token used from then on",
          "[services]") {
  const auto& expected = pushed_image();
  temporary_directory scratch;
  fault_proxy proxy(registry_address());
  proxy.require_bearer_token("t0ken-from-the-proxy");

  check_same_image(pull(proxy, options_in(scratch.path())), expected);

  const auto requests = proxy.requests();
  CHECK(proxy.requests_for("/token?").size() == 1);
  CHECK(std::ranges::count_if(requests, [](const auto& r) { return r.status == 401; }) == 1);
  for (const auto& request : proxy.requests_for("/v2/")) {
    INFO(request.target);
    CHECK((request.status == 401 || request.authorization == "Bearer t0ken-from-the-proxy"));
  }
  CHECK(proxy.requests_for("/blobs/").size() == 4);
}

TEST_CASE("registry faults: 429 waits for Retry-After, 503 for the backoff, then succeeds",
          "[services]") {
  const auto& expected = pushed_image();
  temporary_directory scratch;
  fault_proxy proxy(registry_address());
  auto options = options_in(scratch.path());
  const auto& second = expected.layer_digests[1];

  SECTION("429 once, Retry-After: 1") {
    proxy.add({fault_kind::too_many_requests, second});
    check_same_image(pull(proxy, options), expected);
    const auto requests = proxy.requests_for(second);
    REQUIRE(statuses(requests) == std::vector<int>{429, 200});
    CHECK(requests[1].at - requests[0].at >= 1s);
  }

  SECTION("a Retry-After beyond max_retry_after is cut to it") {
    options.registry.max_retry_after = 0s;
    proxy.add({fault_kind::too_many_requests, second});
    check_same_image(pull(proxy, options), expected);
    const auto requests = proxy.requests_for(second);
    REQUIRE(statuses(requests) == std::vector<int>{429, 200});
    CHECK(requests[1].at - requests[0].at < 900ms);
  }

  SECTION("429 every time ends in the registry's answer") {
    options.registry.attempts = 2;
    proxy.add({fault_kind::too_many_requests, second, fault_rule::every_time});
    CHECK(failure_of([&] { pull(proxy, options); }) ==
          fmt::format("the registry answered 429 for layer 2 {} of {}/{}: slow down", second,
                      proxy.address(), repository));
    check_no_partial_blob(options.cache, second);
  }

  SECTION("503 twice") {
    proxy.add({fault_kind::unavailable, second, 2});
    check_same_image(pull(proxy, options), expected);
    CHECK(statuses(proxy.requests_for(second)) == std::vector<int>{503, 503, 200});
  }
}

TEST_CASE("registry faults: a slow answer arrives whole; a stalled one fails after the stall "
          "timeout",
          "[services]") {
  const auto& expected = pushed_image();
  temporary_directory scratch;
  fault_proxy proxy(registry_address());
  auto options = options_in(scratch.path());
  const auto& first = expected.layer_digests[0];

  SECTION("slow") {
    proxy.add({fault_kind::slow, first});
    const auto start = std::chrono::steady_clock::now();
    check_same_image(pull(proxy, options), expected);
    CHECK(std::chrono::steady_clock::now() - start >= 800ms);
    const auto requests = proxy.requests_for(first);
    REQUIRE(requests.size() == 1);
    CHECK(requests[0].fault == fault_kind::slow);
  }

  SECTION("stalled") {
    options.registry.stall_timeout = 1s;
    options.registry.attempts = 2;
    proxy.add({fault_kind::stall, first, fault_rule::every_time});
    CHECK_THAT(failure_of([&] { pull(proxy, options); }),
               Catch::StartsWith(fmt::format("could not fetch layer 1 {} of {}/{} after 2 "
                                             "attempts: Operation too slow",
                                             first, proxy.address(), repository)));
    check_no_partial_blob(options.cache, first);
  }
}

TEST_CASE("registry faults: blobs redirected to another host arrive; that host never sees the "
          "registry's token",
          "[services]") {
  const auto& expected = pushed_image();
  temporary_directory scratch;
  fault_proxy proxy(registry_address());
  proxy.require_bearer_token("t0ken-for-the-registry-only");
  proxy.add({fault_kind::redirect, "/blobs/", fault_rule::every_time});

  check_same_image(pull(proxy, options_in(scratch.path())), expected);

  std::vector<std::string> other_host_authorization;
  int other_host_requests = 0;
  for (const auto& request : proxy.requests()) {
    if (request.other_host) {
      ++other_host_requests;
      other_host_authorization.push_back(request.authorization);
    } else if (request.status == 307) {
      CHECK(request.authorization == "Bearer t0ken-for-the-registry-only");
    }
  }
  CHECK(other_host_requests == 4);
  CHECK(other_host_authorization == std::vector<std::string>(4, ""));
}

TEST_CASE("http client: a redirect it follows to another host loses the Authorization header",
          "[services]") {
  fault_proxy proxy(registry_address());
  proxy.add({fault_kind::redirect, "/v2/"});
  net::http_client client;
  net::http_request request;
  request.url = "http://" + proxy.address() + "/v2/";
  request.headers = {"Authorization: Bearer not-for-the-other-host"};
  request.follow_redirects = true;

  const auto response = client.perform(request);

  CHECK(response.status == 200);
  CHECK(response.effective_url == "http://" + proxy.other_address() + "/v2/");
  const auto requests = proxy.requests();
  REQUIRE(requests.size() == 2);
  CHECK(requests[0].authorization == "Bearer not-for-the-other-host");
  CHECK(requests[1].other_host);
  CHECK(requests[1].authorization.empty());
}

TEST_CASE("fault proxy: its destructor ends its thread and closes its listeners", "[services]") {
  const auto threads = [] {
    return std::distance(fs::directory_iterator("/proc/self/task"), fs::directory_iterator());
  };
  const auto before = threads();
  std::string address;
  {
    fault_proxy proxy("127.0.0.1:1");
    address = proxy.address();
    CHECK(threads() == before + 1);
  }
  CHECK(threads() == before);

  net::http_client client;
  net::http_request request;
  request.url = "http://" + address + "/v2/";
  CHECK_THROWS_AS(client.perform(request), net::transfer_error);
}
