// The content-addressed blob cache and the verifying readers.
#include <catch2/catch.hpp>

#include <cstdlib>

#include <compactor/image/blob_cache.hpp>
#include <compactor/image/config.hpp>
#include <compactor/image/manifest.hpp>

#include "test_image.hpp"

using namespace compactor;
using namespace compactor::testing;

TEST_CASE("blob cache: lives under XDG_CACHE_HOME/compactor, else ~/.cache/compactor", "[unit]") {
  const char* saved_xdg = std::getenv("XDG_CACHE_HOME");
  const std::string saved = saved_xdg != nullptr ? saved_xdg : "";

  ::setenv("XDG_CACHE_HOME", "/var/tmp/xdg", 1);
  CHECK(image::blob_cache::default_root() == "/var/tmp/xdg/compactor");
  ::unsetenv("XDG_CACHE_HOME");
  CHECK(image::blob_cache::default_root() ==
        std::filesystem::path(std::getenv("HOME")) / ".cache" / "compactor");

  if (saved_xdg != nullptr) {
    ::setenv("XDG_CACHE_HOME", saved.c_str(), 1);
  }
}

TEST_CASE("blob cache: a blob is stored under its digest only once verified", "[unit]") {
  temporary_directory scratch;
  image::blob_cache cache(scratch.path());
  const std::string content = "layer bytes";
  const auto digest = image::sha256_of(content);

  CHECK_FALSE(cache.find(digest));
  const auto path = cache.store(content, digest, static_cast<std::int64_t>(content.size()));
  CHECK(path == scratch.path() / "blobs" / "sha256" / std::string(image::digest_hex(digest)));
  CHECK(read_file(path) == content);
  CHECK(cache.find(digest) == path);

  const auto other = image::sha256_of("something else");
  CHECK_THROWS_WITH(cache.store(content, other),
                    "blob does not match its digest: expected " + other + ", got " + digest);
  CHECK_THROWS_WITH(cache.store(content, digest, 3), Catch::Contains("has 11 bytes but its "
                                                                     "descriptor says 3"));
  CHECK_FALSE(std::filesystem::exists(cache.path_of(other)));
  // Nothing is left behind in the temporary directory.
  CHECK(std::filesystem::is_empty(scratch.path() / "tmp"));
}

TEST_CASE("blob cache: a corrupt entry is detected, removed and can be stored again", "[unit]") {
  temporary_directory scratch;
  const std::string content = "config json";
  const auto digest = image::sha256_of(content);
  const auto path = image::blob_cache(scratch.path()).store(content, digest);

  write_file(path, "config jsoN");
  image::blob_cache fresh(scratch.path()); // a new process hashes entries on first use
  CHECK_FALSE(fresh.find(digest));
  CHECK_FALSE(std::filesystem::exists(path));

  fresh.store(content, digest);
  CHECK(fresh.find(digest) == path);

  write_file(path, "short");
  CHECK_FALSE(image::blob_cache(scratch.path()).find(digest, 11));
}

TEST_CASE("verifying reader: passes a matching stream through and checks it at the end", "[unit]") {
  temporary_directory scratch;
  const std::string content(100'000, 'z');
  write_file(scratch.path() / "blob", content);
  const auto digest = image::sha256_of(content);

  image::layer layer{digest, "application/vnd.oci.image.layer.v1.tar", content.size(),
                     [&] {
                       return image::verifying_reader(image::file_reader(scratch.path() / "blob"),
                                                      digest, 100'000, "layer 1");
                     },
                     digest};
  CHECK(read_layer(layer) == content);

  CHECK_THROWS_AS(image::verifying_reader(image::file_reader(scratch.path() / "blob"), "md5:abc",
                                          -1, "layer 1"),
                  image::verification_error);
}

TEST_CASE("manifest: both manifest kinds parse; others are refused clearly", "[unit]") {
  const auto oci = image::parse_manifest(R"({"schemaVersion":2,
    "mediaType":"application/vnd.oci.image.manifest.v1+json",
    "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:)" +
                                         std::string(64, 'c') + R"(","size":7},
    "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:)" +
                                         std::string(64, 'd') + R"(","size":9}]})");
  CHECK(oci.config.size == 7);
  REQUIRE(oci.layers.size() == 1);
  CHECK(oci.layers[0].media_type == image::media_types::oci_layer_zstd);

  const auto docker =
      image::parse_manifest(R"({"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:)" +
                                std::string(64, 'c') + R"(","size":7},"layers":[]})",
                            image::media_types::docker_manifest);
  CHECK(docker.media_type == image::media_types::docker_manifest);

  CHECK_THROWS_WITH(image::parse_manifest(R"({"schemaVersion":1,"fsLayers":[]})",
                                          "application/vnd.docker.distribution.manifest.v1+json"),
                    Catch::StartsWith("unsupported manifest type"));
  CHECK_THROWS_WITH(image::parse_manifest("{not json"),
                    Catch::StartsWith("the image manifest is not valid JSON"));
  CHECK_THROWS_WITH(image::parse_manifest(R"({"schemaVersion":2,"layers":[{"digest":"x"}],
      "config":{"digest":"sha256:1","size":1}})"),
                    Catch::Contains("has no valid size"));
  CHECK_THROWS_WITH(image::parse_config(R"({"architecture":"amd64","os":"linux"})"),
                    "the image config has no rootfs of type \"layers\"");
}

TEST_CASE("platform: parsed as OS/ARCH[/VARIANT]", "[unit]") {
  CHECK(image::parse_platform("linux/arm64/v8") == image::platform{"linux", "arm64", "v8"});
  CHECK(image::parse_platform("linux/amd64").to_string() == "linux/amd64");
  CHECK_THROWS_AS(image::parse_platform("amd64"), image::format_error);
  CHECK_THROWS_AS(image::parse_platform("linux/"), image::format_error);
  CHECK_THROWS_AS(image::parse_platform("linux/arm/"), image::format_error);
}
