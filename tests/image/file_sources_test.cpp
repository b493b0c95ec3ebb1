// Image sources that read files: OCI layouts, OCI archives and `docker save` archives, the
// latter two made from the test's own OCI layout by skopeo.
#include <catch2/catch.hpp>

#include <cstdlib>

#include <compactor/image/resolve.hpp>

#include "test_image.hpp"

using namespace compactor;
using namespace compactor::testing;

namespace {

// Checks what every source must agree on: the config and the layers' content.
void check_same_image(const image::resolved_image& got, const test_image& made,
                      bool layers_uncompressed) {
  CHECK(got.config_digest == made.config.digest);
  CHECK(got.config_bytes == made.config.bytes);
  CHECK(got.platform_ == image::platform{"linux", "amd64", ""});
  CHECK(got.config.entrypoint == std::vector<std::string>{"/bin/sh", "-c"});
  CHECK(got.config.cmd == std::vector<std::string>{"echo hello from busybox"});
  CHECK(got.config.env == std::vector<std::string>{"PATH=/bin", "GREETING=hello"});
  CHECK(got.config.working_dir == "/home/user");
  CHECK(got.config.user == "1000:1000");
  CHECK(got.config.exposed_ports == std::vector<std::string>{"8080/tcp"});
  CHECK(got.config.labels.at("org.example.purpose") == "compactor tests");
  CHECK(got.config.diff_ids == made.diff_ids);

  REQUIRE(got.layers.size() == made.layers.size());
  for (std::size_t i = 0; i < got.layers.size(); ++i) {
    INFO("layer " << i + 1);
    const auto& layer = got.layers[i];
    CHECK(layer.diff_id == made.diff_ids[i]);
    const auto bytes = read_layer(layer);
    CHECK(image::sha256_of(bytes) == layer.digest);
    CHECK(bytes.size() == layer.size);
    if (layers_uncompressed) {
      CHECK(layer.digest == made.diff_ids[i]);
      CHECK(layer.media_type.find("gzip") == std::string::npos);
    } else {
      CHECK(layer.digest == made.layers[i].digest);
      CHECK(layer.media_type == made.layers[i].media_type);
    }
    CHECK(list_tar(bytes) == list_tar(made.layers[i].bytes));
  }
  CHECK(list_tar(read_layer(got.layers[0])).at("bin/sh") == "-> busybox");
}

std::string skopeo_copy(const test_image& made, const std::string& destination) {
  return fmt::format("skopeo --insecure-policy copy --quiet {} {}", made.oci(), destination);
}

} // namespace

TEST_CASE("oci layout: config and layers come back as written, verified", "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");

  const auto got = image::resolve(made.oci());

  CHECK(got.source == made.oci());
  CHECK(got.manifest_digest == made.manifest.digest);
  CHECK(got.manifest_media_type == image::media_types::oci_manifest);
  check_same_image(got, made, false);
}

TEST_CASE("oci layout: a missing tag and a missing layout are clear errors", "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");

  CHECK_THROWS_WITH(image::resolve("oci:" + made.directory.string() + ":v2"),
                    Catch::Contains("has no image tagged \"v2\" (tags: v1)"));
  CHECK_THROWS_WITH(image::resolve("oci:" + scratch.path().string()),
                    Catch::Contains("is not an OCI image layout"));
  // The only image is taken when no tag is given.
  CHECK(image::resolve("oci:" + made.directory.string()).config_digest == made.config.digest);
}

TEST_CASE("oci layout: a corrupt layer fails at the end of its stream", "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const auto got = image::resolve(made.oci());

  auto bytes = made.layers[1].bytes;
  bytes[bytes.size() / 2] ^= 0x55;
  write_blob(made.directory, {made.layers[1].media_type, bytes, made.layers[1].digest});

  CHECK_THROWS_MATCHES(read_layer(got.layers[1]), image::verification_error,
                       Catch::Matchers::Predicate<image::verification_error>(
                           [&](const image::verification_error& failure) {
                             const std::string message = failure.what();
                             return message.starts_with("layer 2 does not match its digest: "
                                                        "expected " +
                                                        made.layers[1].digest);
                           },
                           "names the layer and its expected digest"));
  // The other layers are still fine.
  CHECK_NOTHROW(read_layer(got.layers[0]));

  // A blob that is longer than its descriptor says fails as soon as it passes the size.
  write_blob(made.directory, {"", made.layers[1].bytes + "extra", made.layers[1].digest});
  CHECK_THROWS_WITH(read_layer(got.layers[1]), Catch::Contains("is longer than the"));
  write_blob(made.directory, {"", made.layers[1].bytes.substr(1), made.layers[1].digest});
  CHECK_THROWS_WITH(read_layer(got.layers[1]), Catch::Contains("ended after"));
}

TEST_CASE("oci layout: a config or manifest with the wrong digest is refused before use",
          "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");

  SECTION("config") {
    write_blob(made.directory, {"", made.config.bytes + " ", made.config.digest});
    CHECK_THROWS_WITH(image::resolve(made.oci()),
                      Catch::Contains("the image config " + made.config.digest + " has") &&
                          Catch::Contains("its descriptor says"));
    auto tampered = made.config.bytes;
    tampered[tampered.find("hello")] = 'j';
    write_blob(made.directory, {"", tampered, made.config.digest});
    CHECK_THROWS_WITH(image::resolve(made.oci()),
                      Catch::StartsWith("the image config does not match its digest"));
  }
  SECTION("manifest") {
    auto tampered = made.manifest.bytes;
    tampered[tampered.find("schemaVersion") + 15] = '3';
    write_blob(made.directory, {"", tampered, made.manifest.digest});
    CHECK_THROWS_WITH(image::resolve(made.oci()),
                      Catch::StartsWith("the image manifest does not match its digest"));
  }
}

TEST_CASE("oci layout: an index resolves to linux/amd64 or the platform asked for", "[unit]") {
  temporary_directory scratch;
  auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const auto arm_config = make_config(made.diff_ids, "arm64");
  const auto arm_manifest = make_manifest(arm_config, made.layers);
  write_blob(made.directory, arm_config);
  write_blob(made.directory, arm_manifest);

  auto amd = descriptor_json(made.manifest);
  amd["platform"] = {{"os", "linux"}, {"architecture", "amd64"}};
  auto arm = descriptor_json(arm_manifest);
  arm["platform"] = {{"os", "linux"}, {"architecture", "arm64"}, {"variant", "v8"}};
  const nlohmann::json index = {{"schemaVersion", 2},
                                {"mediaType", image::media_types::oci_index},
                                {"manifests", {arm, amd}}};
  const auto index_blob = make_blob(std::string(image::media_types::oci_index), index.dump());
  write_blob(made.directory, index_blob);
  write_index(made.directory, index_blob, "multi");
  const auto where = "oci:" + made.directory.string() + ":multi";

  const auto by_default = image::resolve(where);
  CHECK(by_default.manifest_digest == made.manifest.digest);
  CHECK(by_default.platform_.architecture == "amd64");

  image::resolve_options options;
  options.wanted = image::parse_platform("linux/arm64");
  const auto arm_image = image::resolve(where, options);
  CHECK(arm_image.manifest_digest == arm_manifest.digest);
  CHECK(arm_image.config_digest == arm_config.digest);
  CHECK(arm_image.platform_.architecture == "arm64");

  options.wanted = image::parse_platform("linux/riscv64");
  CHECK_THROWS_WITH(image::resolve(where, options),
                    "the image has no manifest for platform linux/riscv64 (it offers: "
                    "linux/arm64/v8, linux/amd64)");
}

TEST_CASE("oci archive made by skopeo yields the same image", "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const auto archive = scratch.path() / "image.tar";
  require_command(skopeo_copy(made, "oci-archive:" + archive.string() + ":edge"));

  const auto got = image::resolve("oci-archive:" + archive.string() + ":edge");

  CHECK(got.manifest_digest == made.manifest.digest);
  check_same_image(got, made, false);
  CHECK_THROWS_WITH(image::resolve("oci-archive:" + archive.string() + ":nope"),
                    Catch::Contains("has no image tagged \"nope\""));
}

TEST_CASE("docker-archive made by skopeo yields the same config and layer contents", "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const auto archive = scratch.path() / "saved.tar";
  require_command(
      skopeo_copy(made, "docker-archive:" + archive.string() + ":compactor/busybox:v1"));

  const auto got = image::resolve("docker-archive:" + archive.string());
  check_same_image(got, made, true);
  CHECK(got.manifest_digest.empty());

  const auto named = image::resolve("docker-archive:" + archive.string() + ":compactor/busybox:v1");
  CHECK(named.name == "docker.io/compactor/busybox:v1");
  CHECK_THROWS_WITH(image::resolve("docker-archive:" + archive.string() + ":other:v1"),
                    Catch::Contains("has no image named other:v1 (names: "
                                    "docker.io/compactor/busybox:v1)") ||
                        Catch::Contains("has no image named other:v1 (names: "
                                        "compactor/busybox:v1)"));

  image::resolve_options arm;
  arm.wanted = image::parse_platform("linux/arm64");
  CHECK_THROWS_WITH(image::resolve("docker-archive:" + archive.string(), arm),
                    Catch::EndsWith("is an image for linux/amd64, not linux/arm64"));
}

TEST_CASE("docker-archive: a layer that does not match its diff_id fails when read", "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");
  const auto archive = scratch.path() / "saved.tar";
  require_command(skopeo_copy(made, "docker-archive:" + archive.string() + ":x:v1"));

  // Flip a byte inside the file data of the top layer (its text file), in place.
  auto bytes = read_file(archive);
  const auto at = bytes.find("hello from the top layer");
  REQUIRE(at != std::string::npos);
  bytes[at] = 'j';
  write_file(archive, bytes);

  const auto got = image::resolve("docker-archive:" + archive.string());
  CHECK_NOTHROW(read_layer(got.layers[0]));
  CHECK_THROWS_WITH(
      read_layer(got.layers[2]),
      Catch::StartsWith("layer 3 does not match its digest: expected " + made.diff_ids[2]));
}

TEST_CASE("file sources: not an archive, a missing file", "[unit]") {
  temporary_directory scratch;
  write_file(scratch.path() / "junk.tar", std::string(2048, 'x'));

  CHECK_THROWS_WITH(image::resolve("docker-archive:" + (scratch.path() / "junk.tar").string()),
                    Catch::Contains("is not a tar archive"));
  CHECK_THROWS_WITH(image::resolve("oci-archive:" + (scratch.path() / "none.tar").string()),
                    Catch::Contains("No such file or directory"));
}

TEST_CASE("docker-archive in the OCI layout of Docker 25+ (blobs/sha256, manifest.json)",
          "[unit]") {
  temporary_directory scratch;
  const auto made = make_busybox_image(scratch.path() / "layout", "v1");

  // Docker 25+ saves uncompressed layer blobs under blobs/sha256 beside an OCI index, and a
  // manifest.json that names them by those paths.
  const auto saved = scratch.path() / "saved";
  std::vector<blob> layers;
  for (const auto& layer : made.layers) {
    const auto tar = read_layer_uncompressed(layer.bytes);
    layers.push_back(make_blob(std::string(image::media_types::oci_layer), tar));
    write_blob(saved, layers.back());
  }
  const auto manifest = make_manifest(made.config, layers);
  write_blob(saved, made.config);
  write_blob(saved, manifest);
  write_index(saved, manifest, "docker.io/compactor/busybox:v25");
  nlohmann::json entry = {
      {"Config", "blobs/sha256/" + std::string(image::digest_hex(made.config.digest))},
      {"RepoTags", {"compactor/busybox:v25"}},
      {"Layers", nlohmann::json::array()}};
  for (const auto& layer : layers) {
    entry["Layers"].push_back("blobs/sha256/" + std::string(image::digest_hex(layer.digest)));
  }
  write_file(saved / "manifest.json", nlohmann::json::array({entry}).dump());
  const auto archive = scratch.path() / "saved.tar";
  require_command(fmt::format("tar -C {} -cf {} .", saved.string(), archive.string()));

  const auto got = image::resolve("docker-archive:" + archive.string() + ":compactor/busybox:v25");
  check_same_image(got, made, true);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    CHECK(got.layers[i].media_type == image::media_types::docker_layer);
  }
}
