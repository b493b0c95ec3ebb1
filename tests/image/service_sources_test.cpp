// Image sources that talk to services: the Docker daemon (Engine API over its socket) and
// registries (the test registry, and one with Basic authentication that this test starts).
// The images are the test's own busybox OCI layout, copied there by skopeo.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <thread>

#include <compactor/image/resolve.hpp>
#include <compactor/support/unique_fd.hpp>

#include "../support/loopback.hpp"
#include "../support/services.hpp"
#include "test_image.hpp"

using namespace compactor;
using namespace compactor::testing;

namespace {

// The manifest a registry holds for `name` as skopeo reads it: what the registry source must
// return. (skopeo may push other compressed forms of layers it has seen before, so the test's
// own manifest is not necessarily what the registry holds.)
struct pushed_image {
  std::string manifest_digest;
  std::vector<std::string> layer_digests;
};

pushed_image pushed_manifest(const std::string& docker_name, const std::string& flags) {
  std::string raw;
  const auto command = fmt::format("skopeo inspect --raw {} {} 2>/dev/null", flags, docker_name);
  REQUIRE(run_command(command, &raw) == 0);
  pushed_image pushed;
  pushed.manifest_digest = image::sha256_of(raw);
  const auto manifest = nlohmann::json::parse(raw);
  for (const auto& layer : manifest.at("layers")) {
    pushed.layer_digests.push_back(layer.at("digest").get<std::string>());
  }
  return pushed;
}

// The config is the test's own; each layer has the expected digest and the test's content.
void check_same_content(const image::resolved_image& got, const test_image& made,
                        const std::vector<std::string>& layer_digests) {
  CHECK(got.config_digest == made.config.digest);
  CHECK(got.config.entrypoint == std::vector<std::string>{"/bin/sh", "-c"});
  CHECK(got.config.env == std::vector<std::string>{"PATH=/bin", "GREETING=hello"});
  CHECK(got.config.diff_ids == made.diff_ids);
  REQUIRE(got.layers.size() == made.layers.size());
  REQUIRE(layer_digests.size() == made.layers.size());
  for (std::size_t i = 0; i < got.layers.size(); ++i) {
    INFO("layer " << i + 1);
    const auto bytes = read_layer(got.layers[i]);
    CHECK(got.layers[i].digest == layer_digests[i]);
    CHECK(list_tar(bytes) == list_tar(made.layers[i].bytes));
  }
}

std::string copy_command(const test_image& made, const std::string& destination,
                         const std::string& flags = "") {
  return fmt::format("skopeo --insecure-policy copy --quiet {} {} {}", flags, made.oci(),
                     destination);
}

image::resolve_options options_for(const temporary_directory& scratch, bool with_daemon) {
  image::resolve_options options;
  options.use_daemon = with_daemon;
  if (with_daemon) {
    options.docker_socket = docker_socket();
  }
  options.cache = scratch.path() / "cache";
  options.registry.docker_config = scratch.path() / "no-docker-config.json";
  return options;
}

void remove_from_daemon(const std::string& name) {
  net::http_client client;
  net::http_request request;
  request.method = "DELETE";
  request.unix_socket = docker_socket();
  request.url = "http://docker/images/" + name + "?force=1";
  const auto status = client.perform(request).status;
  CHECK((status == 200 || status == 404));
}

// A docker-registry of the test's own on a free loopback port, with htpasswd Basic
// authentication when a user is given; its storage lies in `directory`.
class own_registry {
public:
  explicit own_registry(const fs::path& directory, const std::string& user = {},
                        const std::string& password = {}, bool tls = false)
      : directory_(directory), port_(compactor::testing::unused_loopback_port()) {
    std::string auth;
    std::string tls_settings;
    std::string scheme = "http";
    if (tls) {
      fs::create_directories(directory);
      require_command(
          fmt::format("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
                      "-addext subjectAltName=IP:127.0.0.1 -keyout {0}/key.pem -out {0}/cert.pem",
                      directory.string()));
      tls_settings = fmt::format("  tls:\n    certificate: {0}/cert.pem\n    key: "
                                 "{0}/key.pem\n",
                                 directory.string());
      // skopeo takes the CA certificates of a directory's *.crt files.
      fs::create_directories(directory / "certs");
      fs::copy_file(directory / "cert.pem", directory / "certs" / "ca.crt");
      scheme = "https";
    }
    if (!user.empty()) {
      fs::create_directories(directory);
      require_command(fmt::format("htpasswd -Bbn {} {} > {}", user, password,
                                  (directory / "htpasswd").string()));
      auth = fmt::format("auth:\n  htpasswd:\n    realm: compactor-test\n    path: {}\n",
                         (directory / "htpasswd").string());
    }
    write_file(directory / "config.yml",
               fmt::format("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                           "    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{}\n{}{}",
                           (directory / "storage").string(), port_, tls_settings, auth));
    std::string output;
    REQUIRE(
        run_command(fmt::format("docker-registry serve {} > {} 2>&1 & echo $!",
                                (directory / "config.yml").string(), (directory / "log").string()),
                    &output) == 0);
    pid_ = std::stoi(output);
    for (int i = 0; i < 100; ++i) {
      if (run_command(fmt::format("curl -sk -o /dev/null {}://{}/v2/", scheme, address())) == 0) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    FAIL("the test's own registry did not start: " + read_file(directory / "log"));
  }
  own_registry(const own_registry&) = delete;
  own_registry& operator=(const own_registry&) = delete;
  ~own_registry() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
    }
  }

  [[nodiscard]] std::string address() const { return fmt::format("127.0.0.1:{}", port_); }
  [[nodiscard]] fs::path certificate() const { return directory_ / "cert.pem"; }

  // Where the registry keeps a blob (the distribution registry's filesystem driver layout).
  [[nodiscard]] fs::path blob_data(std::string_view digest) const {
    const std::string hex(image::digest_hex(digest));
    return directory_ / "storage/docker/registry/v2/blobs/sha256" / hex.substr(0, 2) / hex / "data";
  }

private:
  fs::path directory_;
  int port_;
  int pid_ = -1;
};

} // namespace

TEST_CASE("docker daemon: an image copied in by skopeo is exported with the same content",
          "[services]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const std::string name = "compactor-test/busybox:daemon";
  require_command(
      copy_command(made, "docker-daemon:" + name, "--dest-daemon-host unix://" + docker_socket()));
  const auto options = options_for(scratch, true);

  const auto exported = image::resolve("docker-daemon:" + name, options);
  CHECK(exported.source == "docker-daemon:docker.io/compactor-test/busybox:daemon");
  CHECK(exported.name == "docker.io/compactor-test/busybox:daemon");
  check_same_content(exported, made, made.diff_ids);
  CHECK(exported.manifest_digest.empty()); // it never was in a registry

  // Now the cache holds everything: the image comes from there, read the same.
  const auto cached = image::resolve("docker-daemon:" + name, options);
  check_same_content(cached, made, made.diff_ids);

  // What `docker save` writes reads the same as a docker-archive file.
  {
    net::http_client client;
    net::http_request request;
    request.unix_socket = docker_socket();
    request.url = "http://docker/images/get?names=compactor-test%2Fbusybox%3Adaemon";
    std::ofstream saved(scratch.path() / "saved.tar", std::ios::binary);
    REQUIRE(client
                .perform(request,
                         [&](std::string_view chunk) {
                           saved.write(chunk.data(), static_cast<std::streamsize>(chunk.size()));
                         })
                .status == 200);
  }
  const auto archive = "docker-archive:" + (scratch.path() / "saved.tar").string();
  check_same_content(image::resolve(archive + ":" + name, options), made, made.diff_ids);

  // By image ID as well.
  const auto by_id = image::resolve("docker-daemon:" + made.config.digest, options);
  CHECK(by_id.config_digest == made.config.digest);
  remove_from_daemon(name);
}

TEST_CASE("docker daemon: a missing image is an error unless a bare name may pull it",
          "[services]") {
  temporary_directory scratch;
  const auto options = options_for(scratch, true);

  CHECK_THROWS_WITH(image::resolve("docker-daemon:compactor-test/absent:none", options),
                    "the Docker daemon at " + docker_socket() +
                        " has no image docker.io/compactor-test/absent:none");

  // A bare name goes through the daemon, which pulls it from the test registry.
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const auto name = registry_address() + "/compactor-test/busybox:pull-through";
  require_command(copy_command(made, "docker://" + name, "--dest-tls-verify=false"));
  remove_from_daemon(name);

  auto pulling = options;
  std::vector<std::string> statuses;
  pulling.on_pull_progress = [&](const image::pull_progress& progress) {
    statuses.push_back(progress.status);
  };
  const auto pulled = image::resolve(name, pulling);
  CHECK(pulled.source.starts_with("docker-daemon:"));
  CHECK(pulled.manifest_digest ==
        pushed_manifest("docker://" + name, "--tls-verify=false").manifest_digest);
  check_same_content(pulled, made, made.diff_ids);
  INFO(fmt::format("{}", fmt::join(statuses, " | ")));
  // Each layer is either pulled or, when the daemon keeps it from elsewhere, reused.
  CHECK(std::ranges::count_if(statuses, [](const std::string& status) {
          return status == "Pull complete" || status == "Already exists";
        }) == 3);

  CHECK_THROWS_WITH(image::resolve(registry_address() + "/compactor-test/absent:none", pulling),
                    Catch::StartsWith("the Docker daemon could not pull"));
  remove_from_daemon(name);
}

TEST_CASE("registry: an image pushed by skopeo comes back with the same manifest and layers",
          "[services]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const auto name = registry_address() + "/compactor-test/busybox:registry";
  require_command(copy_command(made, "docker://" + name, "--dest-tls-verify=false"));
  const auto options = options_for(scratch, false);

  const auto got = image::resolve("docker://" + name, options);
  const auto pushed = pushed_manifest("docker://" + name, "--tls-verify=false");
  CHECK(got.manifest_digest == pushed.manifest_digest);
  CHECK(got.manifest_media_type == image::media_types::oci_manifest);
  check_same_content(got, made, pushed.layer_digests);

  const auto pinned =
      "docker://" + registry_address() + "/compactor-test/busybox@" + pushed.manifest_digest;
  CHECK(image::resolve(pinned, options).manifest_digest == pushed.manifest_digest);

  CHECK_THROWS_WITH(
      image::resolve("docker://" + registry_address() + "/compactor-test/busybox:no-such-tag",
                     options),
      Catch::StartsWith("the registry has no manifest no-such-tag"));

  // Without a daemon, a bare name goes to the registry.
  auto no_daemon = options;
  no_daemon.use_daemon = true;
  no_daemon.docker_socket = (scratch.path() / "no-daemon.sock").string();
  CHECK(image::resolve(name, no_daemon).source == "docker://" + name);
}

TEST_CASE("registry: a corrupt cache entry is fetched again; a corrupt served blob fails",
          "[services]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  own_registry registry(scratch.path() / "registry");
  const auto name = "docker://" + registry.address() + "/compactor-test/busybox:corrupt";
  require_command(copy_command(made, name, "--dest-tls-verify=false"));
  const auto options = options_for(scratch, false);
  const auto top = pushed_manifest(name, "--tls-verify=false").layer_digests.at(2);
  const auto top_bytes = read_file(registry.blob_data(top));

  const auto first = image::resolve(name, options);
  CHECK(read_layer(first.layers[2]) == top_bytes);
  const auto cached = options.cache / "blobs" / "sha256" / std::string(image::digest_hex(top));
  REQUIRE(std::filesystem::exists(cached));
  write_file(cached, "not the layer");

  const auto second = image::resolve(name, options);
  CHECK(read_layer(second.layers[2]) == top_bytes);
  CHECK(read_file(cached) == top_bytes);

  // The registry serves bytes that are not the blob (its storage damaged behind its back).
  const auto served = registry.blob_data(top);
  auto damaged = top_bytes;
  damaged[damaged.size() / 2] ^= 1;
  write_file(served, damaged);
  auto fresh = options;
  fresh.cache = scratch.path() / "fresh-cache";
  const auto third = image::resolve(name, fresh);
  CHECK_THROWS_WITH(read_layer(third.layers[2]), "layer 3 does not match its digest: expected " +
                                                     top + ", got " + image::sha256_of(damaged));
  CHECK_FALSE(fs::exists(fresh.cache / "blobs" / "sha256" / std::string(image::digest_hex(top))));

  // A damaged config is refused before anything is read.
  write_file(registry.blob_data(made.config.digest), made.config.bytes + " ");
  fresh.cache = scratch.path() / "third-cache";
  CHECK_THROWS_WITH(image::resolve(name, fresh),
                    Catch::StartsWith("the image config " + made.config.digest + " has"));
}

TEST_CASE("registry: Basic authentication with credentials from the Docker config", "[services]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  own_registry secured(scratch.path() / "registry", "tester", "s3cret");
  const auto name = "docker://" + secured.address() + "/compactor-test/busybox:auth";
  require_command(copy_command(made, name, "--dest-tls-verify=false --dest-creds tester:s3cret"));
  auto options = options_for(scratch, false);

  CHECK_THROWS_WITH(image::resolve(name, options),
                    "the registry " + secured.address() +
                        " needs a user name and password; add them to the auths of "
                        "~/.docker/config.json (docker login)");

  options.registry.docker_config = scratch.path() / "config.json";
  write_file(options.registry.docker_config,
             fmt::format(R"({{"auths":{{"{}":{{"auth":"{}"}}}}}})", secured.address(),
                         image::detail::base64("tester:wrong")));
  CHECK_THROWS_WITH(image::resolve(name, options),
                    "the registry " + secured.address() +
                        " refused the credentials for compactor-test/busybox");

  write_file(
      options.registry.docker_config,
      fmt::format(R"({{"auths":{{"http://{}":{{"username":"tester","password":"s3cret"}}}}}})",
                  secured.address()));
  const auto got = image::resolve(name, options);
  const auto pushed = pushed_manifest(name, "--tls-verify=false --creds tester:s3cret");
  CHECK(got.manifest_digest == pushed.manifest_digest);
  check_same_content(got, made, pushed.layer_digests);
}

TEST_CASE("registry: HTTPS is verified against the system CAs plus a given CA file", "[services]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  own_registry secured(scratch.path() / "registry", {}, {}, true);
  const auto name = "docker://" + secured.address() + "/compactor-test/busybox:tls";
  require_command(copy_command(
      made, name, "--dest-cert-dir " + (scratch.path() / "registry" / "certs").string()));
  auto options = options_for(scratch, false);
  options.registry.https_on_loopback = true;

  CHECK_THROWS_WITH(image::resolve(name, options),
                    Catch::Contains("https://" + secured.address()) &&
                        Catch::Contains("certificate"));

  options.registry.ca_file = secured.certificate().string();
  const auto got = image::resolve(name, options);
  const auto pushed =
      pushed_manifest(name, "--cert-dir " + (scratch.path() / "registry" / "certs").string());
  CHECK(got.manifest_digest == pushed.manifest_digest);
  check_same_content(got, made, pushed.layer_digests);
}
