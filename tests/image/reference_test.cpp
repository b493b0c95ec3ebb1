// Image references: Docker's grammar and defaults, and skopeo's transport prefixes.
#include <catch2/catch.hpp>

#include <string>

#include <compactor/image/reference.hpp>

using compactor::image::location;
using compactor::image::parse_location;
using compactor::image::parse_reference;
using compactor::image::reference_error;
using compactor::image::transport;

namespace {

const std::string sha = "sha256:" + std::string(64, 'a');

} // namespace

TEST_CASE("reference: Docker's defaults fill in domain, library/ and latest", "[unit]") {
  const auto alpine = parse_reference("alpine");
  CHECK(alpine.domain == "docker.io");
  CHECK(alpine.path == "library/alpine");
  CHECK(alpine.tag == "latest");
  CHECK(alpine.digest.empty());
  CHECK(alpine.to_string() == "docker.io/library/alpine:latest");
  CHECK(alpine.familiar() == "alpine:latest");

  CHECK(parse_reference("alpine:3.19").to_string() == "docker.io/library/alpine:3.19");
  CHECK(parse_reference("bitnami/redis").to_string() == "docker.io/bitnami/redis:latest");
  CHECK(parse_reference("docker.io/alpine").to_string() == "docker.io/library/alpine:latest");
  CHECK(parse_reference("index.docker.io/library/alpine").to_string() ==
        "docker.io/library/alpine:latest");
  CHECK(parse_reference("a/b/c/d").to_string() == "docker.io/a/b/c/d:latest");
}

TEST_CASE("reference: the first component is a domain only with '.', ':' or localhost", "[unit]") {
  const auto with_port = parse_reference("localhost:5000/team/app:v1.2");
  CHECK(with_port.domain == "localhost:5000");
  CHECK(with_port.path == "team/app");
  CHECK(with_port.tag == "v1.2");
  CHECK(with_port.familiar() == "localhost:5000/team/app:v1.2");

  CHECK(parse_reference("localhost/app").domain == "localhost");
  CHECK(parse_reference("ghcr.io/owner/app").domain == "ghcr.io");
  CHECK(parse_reference("127.0.0.1:5000/app").domain == "127.0.0.1:5000");
  CHECK(parse_reference("[::1]:5000/app:x").domain == "[::1]:5000");
  CHECK(parse_reference("[fe80::1]/app").domain == "[fe80::1]");
  CHECK(parse_reference("Registry/app").domain == "Registry");
  // Without '.', ':' or "localhost" the first component is part of the path on docker.io.
  CHECK(parse_reference("team/app").domain == "docker.io");
  CHECK(parse_reference("team/app").path == "team/app");
  // A single component on another registry gets no library/ prefix.
  CHECK(parse_reference("example.com/app").path == "app");
}

TEST_CASE("reference: digests, with and without a tag", "[unit]") {
  const auto pinned = parse_reference("alpine@" + sha);
  CHECK(pinned.tag.empty());
  CHECK(pinned.digest == sha);
  CHECK(pinned.to_string() == "docker.io/library/alpine@" + sha);
  CHECK(pinned.manifest_reference() == sha);

  const auto both = parse_reference("example.com:443/app:1.0@" + sha);
  CHECK(both.domain == "example.com:443");
  CHECK(both.tag == "1.0");
  CHECK(both.digest == sha);
  CHECK(both.manifest_reference() == sha);
  CHECK(both.familiar() == "example.com:443/app:1.0@" + sha);

  CHECK(parse_reference("app:latest").manifest_reference() == "latest");
}

TEST_CASE("reference: separators and tag characters follow the grammar", "[unit]") {
  for (const char* valid : {"a", "a.b", "a_b", "a__b", "a-b", "a---b", "a1/b2.c3_d4",
                            "app:V1_x.y-z", "app:_hidden", "0/1:2"}) {
    INFO(valid);
    CHECK_NOTHROW(parse_reference(valid));
  }
  CHECK(parse_reference("app:" + std::string(128, 't')).tag.size() == 128);
}

TEST_CASE("reference: invalid references are refused with one clear error", "[unit]") {
  const auto refused = [](const std::string& text, const std::string& why) {
    INFO(text);
    CHECK_THROWS_MATCHES(parse_reference(text), reference_error,
                         Catch::Matchers::Predicate<reference_error>(
                             [&](const reference_error& failure) {
                               const std::string message = failure.what();
                               return message.starts_with("invalid image reference \"" + text) &&
                                      message.find(why) != std::string::npos;
                             },
                             "message names the reference and says " + why));
  };
  refused("", "empty");
  refused("docker.io/Library/alpine", "lower case");
  refused("alpine:", "not a valid tag");
  refused("alpine:.hidden", "not a valid tag");
  refused("alpine:-x", "not a valid tag");
  refused("alpine:" + std::string(129, 't'), "not a valid tag");
  refused("alpine@sha256:abc", "not a digest");
  refused("alpine@sha256:" + std::string(64, 'A'), "not a digest");
  refused("alpine@" + std::string(64, 'a'), "not a digest");
  refused("a..b", "not a valid repository name component");
  refused("a._b", "not a valid repository name component");
  refused("a___b", "not a valid repository name component");
  refused("-a", "not a valid repository name component");
  refused("a-", "not a valid repository name component");
  refused("app/", "not a valid repository name component");
  refused("app//x", "not a valid repository name component");
  refused("app name", "not a valid repository name component");
  refused(":tag", "repository name is empty");
  refused("example.com/", "repository name is empty");
  refused("-bad.com/app", "not a valid registry host");
  refused("host:port/app", "not a valid registry host");
  refused("[zz::1]/app", "not a valid registry host");
  refused(std::string(64, 'f'), "image ID");
  refused("example.com/" + std::string(250, 'a'), "longer than 255");
}

TEST_CASE("location: transport prefixes are spelled as skopeo spells them", "[unit]") {
  const auto registry = parse_location("docker://localhost:5000/app:1");
  CHECK(registry.kind == transport::registry);
  CHECK(registry.ref.to_string() == "localhost:5000/app:1");
  CHECK(registry.to_string() == "docker://localhost:5000/app:1");

  const auto daemon = parse_location("docker-daemon:busybox:musl");
  CHECK(daemon.kind == transport::docker_daemon);
  CHECK(daemon.ref.to_string() == "docker.io/library/busybox:musl");

  const auto by_id = parse_location("docker-daemon:" + sha);
  CHECK(by_id.kind == transport::docker_daemon);
  CHECK(by_id.image_id == sha);
  CHECK_FALSE(by_id.has_ref);

  const auto archive = parse_location("docker-archive:/tmp/x.tar");
  CHECK(archive.kind == transport::docker_archive);
  CHECK(archive.path == "/tmp/x.tar");
  CHECK_FALSE(archive.has_ref);

  const auto named = parse_location("docker-archive:x.tar:app:2");
  CHECK(named.path == "x.tar");
  CHECK(named.has_ref);
  CHECK(named.ref.to_string() == "docker.io/library/app:2");

  const auto layout = parse_location("oci:/images/dir:v1");
  CHECK(layout.kind == transport::oci_layout);
  CHECK(layout.path == "/images/dir");
  CHECK(layout.tag == "v1");
  CHECK(parse_location("oci:dir").tag.empty());

  const auto oci_archive = parse_location("oci-archive:img.tar:edge");
  CHECK(oci_archive.kind == transport::oci_archive);
  CHECK(oci_archive.path == "img.tar");
  CHECK(oci_archive.tag == "edge");

  const auto bare = parse_location("alpine");
  CHECK(bare.kind == transport::automatic);
  CHECK(bare.ref.to_string() == "docker.io/library/alpine:latest");
}

TEST_CASE("location: malformed transports are refused", "[unit]") {
  CHECK_THROWS_AS(parse_location("oci:"), reference_error);
  CHECK_THROWS_AS(parse_location("oci::tag"), reference_error);
  CHECK_THROWS_AS(parse_location("docker-archive:"), reference_error);
  CHECK_THROWS_AS(parse_location("docker://"), reference_error);
  CHECK_THROWS_AS(parse_location("docker://app/UPPER"), reference_error);
  CHECK_THROWS_AS(parse_location("docker-daemon:sha256:123"), reference_error);
  CHECK_THROWS_WITH(parse_location("docker://a b"),
                    Catch::StartsWith("invalid image reference \"a b\""));
}
