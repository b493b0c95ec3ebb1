// Flattening layers into one archive: OCI whiteout rules, hard links, metadata, and the
// parents-before-children order the kernel's initramfs unpacker needs.
#include <catch2/catch.hpp>

#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <openssl/evp.h>

#include <compactor/archive/output.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>

#include "../support/requirements.hpp"
#include "image_tree.hpp"

namespace {

using namespace compactor::testing;
namespace archive = compactor::archive;
namespace fs = std::filesystem;

const std::string long_name = "long/" + std::string(120, 'd') + "/" + std::string(200, 'f');
const std::string unicode_name = "unicod\xc3\xa9/\xe3\x83\x95\xe3\x82\xa1\xe3\x82\xa4\xe3\x83\xab";
const std::string busybox_content(300'000, 'b');

tar_item with_owner(tar_item item, std::uint32_t uid, std::uint32_t gid, std::int64_t mtime) {
  item.uid = uid;
  item.gid = gid;
  item.mtime = mtime;
  return item;
}

tar_item special(std::string name, mode_t mode, unsigned major_number = 0,
                 unsigned minor_number = 0) {
  return {.name = std::move(name), .mode = mode, .rdev_major = major_number,
          .rdev_minor = minor_number};
}

// Bottom layer first. `with_devices` adds entries an unprivileged unpacker cannot create.
std::vector<std::vector<tar_item>> scenario(bool with_devices) {
  std::vector<tar_item> base = {
      dir("./"),
      dir("etc/"),
      file("etc/passwd", "root:x:0:0\n"),
      file("etc/removed", "gone"),
      dir("opaque/"),
      file("opaque/old", "old"),
      dir("opaque/sub/"),
      file("opaque/sub/deep", "deep"),
      file("becomes-dir", "was a file"),
      dir("becomes-file/"),
      file("becomes-file/child", "child"),
      dir("bin/"),
      file("bin/busybox", busybox_content, 0755),
      hardlink("bin/sh", "bin/busybox"),
      dir("data/"),
      file("data/target", "linked content"),
      hardlink("data/alias", "data/target"),
      dir("lower/"),
      file("lower/original", "from below"),
      with_owner(dir("keep/", 0700), 1000, 1000, 1'500'000'000),
      dir("usr/"),
      dir("usr/bin/"),
      file("usr/bin/su", "su", 04755),
      with_owner(file("usr/bin/wall", "wall", 02755), 0, 5, 1'400'000'000),
      dir("tmp/", 01777),
      dir("run/"),
      special("run/fifo", S_IFIFO | 0600),
      soft_link("usr/lib64", "/usr/lib"),
      soft_link("rel", "etc/passwd"),
  };
  if (with_devices) {
    base.push_back(dir("dev/"));
    base.push_back(special("dev/null2", S_IFCHR | 0666, 1, 3));
    base.push_back(special("dev/loop9", S_IFBLK | 0660, 7, 9));
  }
  std::vector<tar_item> upper = {
      whiteout("etc/.wh.removed"),
      dir("opaque/"),
      file("opaque/new", "new"),
      whiteout("opaque/.wh..wh..opq"),
      dir("becomes-dir/"),
      file("becomes-dir/inside", "inside"),
      file("becomes-file", "now a file"),
      whiteout("data/.wh.target"),
      file("keep/new-child", "child of keep"),
      dir("./a//b/"),
      file("a/b/c", "c"),
      file("/abs/x", "absolute"),
      file(long_name, "long"),
      file(unicode_name, "unicode"),
      dir("upper/"),
      hardlink("upper/link", "lower/original"),
      file("dup", "first"),
      file("dup", "second"),
      file("late/child", "before its directory"),
      dir("late/", 0750),
  };
  std::vector<tar_item> top = {
      file("etc/passwd", "root:x:0:0:new\n", 0600),
  };
  return {base, {}, upper, top};
}

std::vector<compactor::image::layer> make_layers(const std::vector<std::vector<tar_item>>& items,
                                                 std::vector<layer_compression> compressions) {
  std::vector<compactor::image::layer> layers;
  for (std::size_t i = 0; i < items.size(); ++i) {
    layers.push_back(memory_layer(fmt::format("sha256:layer{}", i),
                                  make_tar(items[i], compressions[i % compressions.size()])));
  }
  return layers;
}

template <typename Format = archive::cpio_newc>
std::vector<std::byte> flatten_to_bytes(const std::vector<compactor::image::layer>& layers,
                                        archive::compression method,
                                        compactor::flatten::statistics* stats = nullptr) {
  std::FILE* file = std::tmpfile();
  archive::writer<Format> out(fileno(file), {.compression = {.method = method}});
  const auto result = compactor::flatten::flatten(layers, out);
  if (stats != nullptr) {
    *stats = result;
  }
  out.finish();
  std::fflush(file);
  std::vector<std::byte> bytes(static_cast<std::size_t>(std::ftell(file)));
  std::rewind(file);
  REQUIRE(std::fread(bytes.data(), 1, bytes.size(), file) == bytes.size());
  std::fclose(file);
  return bytes;
}

bool same_inode(const tree& t, const std::string& a, const std::string& b) {
  return t.paths.at(a) == t.paths.at(b);
}

const std::vector<layer_compression> mixed = {layer_compression::gzip, layer_compression::none,
                                              layer_compression::zstd, layer_compression::none};

} // namespace

TEST_CASE("flattening applies whiteouts, opaque directories and type changes", "[flatten]") {
  const auto layers = make_layers(scenario(true), mixed);
  compactor::flatten::statistics stats;
  const auto t = read_tree(flatten_to_bytes(layers, archive::compression::zstd, &stats));
  CHECK(t.problems.empty());
  CHECK(stats.layers == 4);

  CHECK_FALSE(t.has("etc/removed"));
  CHECK(t.at("etc/passwd").content == "root:x:0:0:new\n");
  CHECK((t.at("etc/passwd").mode & 07777) == 0600);

  CHECK(t.has("opaque/new"));
  CHECK_FALSE(t.has("opaque/old"));
  CHECK_FALSE(t.has("opaque/sub"));
  CHECK_FALSE(t.has("opaque/sub/deep"));

  CHECK(S_ISDIR(t.at("becomes-dir").mode));
  CHECK(t.at("becomes-dir/inside").content == "inside");
  CHECK(S_ISREG(t.at("becomes-file").mode));
  CHECK(t.at("becomes-file").content == "now a file");
  CHECK_FALSE(t.has("becomes-file/child"));

  CHECK(t.at("dup").content == "second");

  const std::set<std::string> expected = {
      "etc", "etc/passwd", "opaque", "opaque/new", "becomes-dir", "becomes-dir/inside",
      "becomes-file", "bin", "bin/busybox", "bin/sh", "data", "data/alias", "lower",
      "lower/original", "keep", "keep/new-child", "usr", "usr/bin", "usr/bin/su",
      "usr/bin/wall", "tmp", "run", "run/fifo", "usr/lib64", "rel", "dev", "dev/null2",
      "dev/loop9", "a", "a/b", "a/b/c", "abs", "abs/x", "long",
      "long/" + std::string(120, 'd'), long_name, "unicod\xc3\xa9", unicode_name, "upper",
      "upper/link", "dup", "late", "late/child"};
  std::set<std::string> found;
  for (const auto& [path, node] : t.paths) {
    found.insert(path);
  }
  CHECK(found == expected);
}

TEST_CASE("flattening keeps metadata, special files and names", "[flatten]") {
  const auto layers = make_layers(scenario(true), mixed);
  const auto t = read_tree(flatten_to_bytes(layers, archive::compression::gzip));

  CHECK((t.at("usr/bin/su").mode & 07777) == 04755);
  CHECK((t.at("usr/bin/wall").mode & 07777) == 02755);
  CHECK(t.at("usr/bin/wall").gid == 5);
  CHECK(t.at("usr/bin/wall").mtime == 1'400'000'000);
  CHECK((t.at("tmp").mode & 07777) == 01777);
  CHECK(S_ISFIFO(t.at("run/fifo").mode));
  CHECK(S_ISCHR(t.at("dev/null2").mode));
  CHECK(t.at("dev/null2").rdev_major == 1);
  CHECK(t.at("dev/null2").rdev_minor == 3);
  CHECK(S_ISBLK(t.at("dev/loop9").mode));
  CHECK(t.at("dev/loop9").rdev_minor == 9);
  CHECK(S_ISLNK(t.at("usr/lib64").mode));
  CHECK(t.at("usr/lib64").content == "/usr/lib");
  CHECK(t.at("rel").content == "etc/passwd");
  CHECK(t.at("a/b/c").content == "c");
  CHECK(t.at("abs/x").content == "absolute");
  CHECK(t.at(long_name).content == "long");
  CHECK(t.at(unicode_name).content == "unicode");

  // "keep/" is needed by an upper layer before its own entry (in the bottom layer) is read:
  // its owner and mode must still be the bottom layer's.
  CHECK((t.at("keep").mode & 07777) == 0700);
  CHECK(t.at("keep").uid == 1000);
  CHECK(t.at("keep").gid == 1000);
  CHECK((t.at("late").mode & 07777) == 0750);
  CHECK(t.at("late/child").content == "before its directory");
}

TEST_CASE("flattening writes hard links as the kernel links them", "[flatten]") {
  const auto layers = make_layers(scenario(false), mixed);
  compactor::flatten::statistics stats;
  const auto bytes = flatten_to_bytes(layers, archive::compression::none, &stats);
  const auto t = read_tree(bytes);
  CHECK(t.problems.empty());

  // Same layer, both names visible.
  CHECK(same_inode(t, "bin/busybox", "bin/sh"));
  CHECK(t.at("bin/sh").content == busybox_content);
  // Same layer, the target whited out by an upper layer.
  CHECK(t.at("data/alias").content == "linked content");
  // A link in an upper layer to a file of a lower one.
  CHECK(same_inode(t, "lower/original", "upper/link"));
  CHECK(t.at("upper/link").content == "from below");
  CHECK(stats.hard_link_sets == 2);

  // The same through the tar writer, where later members name the first.
  const auto tar = read_tree(flatten_to_bytes<archive::tar_pax>(layers,
                                                                archive::compression::none));
  CHECK(same_inode(tar, "bin/busybox", "bin/sh"));
  CHECK(same_inode(tar, "lower/original", "upper/link"));
  CHECK(tar.at("data/alias").content == "linked content");
}

TEST_CASE("a hard link whose target a layer removes is an error", "[flatten]") {
  const std::vector<std::vector<tar_item>> items = {
      {file("t", "x")}, {whiteout(".wh.t")}, {hardlink("l", "t")}};
  const auto layers = make_layers(items, {layer_compression::none});
  std::FILE* file = std::tmpfile();
  archive::writer<archive::cpio_newc> out(fileno(file), {});
  CHECK_THROWS_WITH(compactor::flatten::flatten(layers, out),
                    Catch::Contains("sha256:layer2") && Catch::Contains("\"l\"") &&
                        Catch::Contains("sha256:layer1"));
  std::fclose(file);
}

TEST_CASE("an entry climbing above the root is an error naming layer and entry", "[flatten]") {
  for (const std::string name : {"../evil", "a/../../evil", "/../evil"}) {
    const auto layers = make_layers({{dir("a/"), file(name, "x")}}, {layer_compression::gzip});
    std::FILE* file = std::tmpfile();
    archive::writer<archive::cpio_newc> out(fileno(file), {});
    CHECK_THROWS_WITH(compactor::flatten::flatten(layers, out),
                      Catch::Contains("sha256:layer0") && Catch::Contains(name) &&
                          Catch::Contains("climbs above the image root"));
    std::fclose(file);
  }
  const auto link_layers =
      make_layers({{file("a", "x"), hardlink("b", "../../a")}}, {layer_compression::none});
  std::FILE* file = std::tmpfile();
  archive::writer<archive::cpio_newc> out(fileno(file), {});
  CHECK_THROWS_WITH(compactor::flatten::flatten(link_layers, out),
                    Catch::Contains("../../a"));
  std::fclose(file);
}

TEST_CASE("empty layers, including an empty blob, flatten to nothing", "[flatten]") {
  std::vector<compactor::image::layer> layers = {
      memory_layer("sha256:empty-blob", {}),
      memory_layer("sha256:empty-tar", make_tar({}, layer_compression::gzip)),
      memory_layer("sha256:one", make_tar({file("x", "y")}, layer_compression::zstd))};
  const auto t = read_tree(flatten_to_bytes(layers, archive::compression::gzip));
  CHECK(t.paths.size() == 1);
  CHECK(t.at("x").content == "y");
}

TEST_CASE("the same layers give the same bytes", "[flatten]") {
  const auto layers = make_layers(scenario(true), mixed);
  for (const auto method : {archive::compression::none, archive::compression::gzip,
                            archive::compression::zstd, archive::compression::lz4,
                            archive::compression::xz}) {
    const auto first = flatten_to_bytes(layers, method);
    const auto second = flatten_to_bytes(layers, method);
    CHECK(first.size() > 0);
    CHECK(first == second);
  }
}

TEST_CASE("every layer byte is read exactly once", "[flatten]") {
  auto layers = make_layers(scenario(true), mixed);
  std::vector<std::size_t> opened(layers.size()), read(layers.size());
  for (std::size_t i = 0; i < layers.size(); ++i) {
    auto inner = layers[i].open;
    layers[i].open = [inner, &opened, &read, i]() -> compactor::image::byte_reader {
      ++opened[i];
      auto reader = inner();
      return [reader, &read, i](std::span<std::byte> buffer) {
        const auto n = reader(buffer);
        read[i] += n;
        return n;
      };
    };
  }
  flatten_to_bytes(layers, archive::compression::none);
  for (std::size_t i = 0; i < layers.size(); ++i) {
    CHECK(opened[i] == 1);
    CHECK(read[i] == layers[i].size);
  }
}

// --- Against the reference tools ---------------------------------------------------------------

namespace {

std::string sha256_hex(std::span<const std::byte> bytes) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(bytes.data(), bytes.size(), digest, &length, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned i = 0; i < length; ++i) {
    hex += fmt::format("{:02x}", digest[i]);
  }
  return hex;
}

std::string write_blob(const fs::path& layout, std::span<const std::byte> bytes) {
  const auto hex = sha256_hex(bytes);
  std::ofstream(layout / "blobs" / "sha256" / hex, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));
  return hex;
}

std::string as_string(const nlohmann::json& json) { return json.dump(); }

std::span<const std::byte> bytes_of(const std::string& text) {
  return std::as_bytes(std::span(text.data(), text.size()));
}

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "compactor-flatten-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~temp_dir() { fs::remove_all(path); }
};

int run(const std::string& command) { return std::system(command.c_str()); }

} // namespace

TEST_CASE("the flattened tree matches umoci's unpack of the same layers", "[flatten]") {
  if (!find_program("umoci")) {
    WARN("umoci is not installed; the cross-check is left out");
    return;
  }
  const auto items = scenario(false);
  temp_dir work;
  const auto layout = work.path / "image";
  fs::create_directories(layout / "blobs" / "sha256");
  std::ofstream(layout / "oci-layout") << R"({"imageLayoutVersion":"1.0.0"})";

  nlohmann::json layer_descriptors = nlohmann::json::array();
  nlohmann::json diff_ids = nlohmann::json::array();
  std::vector<compactor::image::layer> layers;
  for (const auto& layer_items : items) {
    const auto plain = make_tar(layer_items, layer_compression::none);
    const auto gzipped = make_tar(layer_items, layer_compression::gzip);
    const auto hex = write_blob(layout, gzipped);
    diff_ids.push_back("sha256:" + sha256_hex(plain));
    layer_descriptors.push_back({{"mediaType", "application/vnd.oci.image.layer.v1.tar+gzip"},
                                 {"digest", "sha256:" + hex},
                                 {"size", gzipped.size()}});
    layers.push_back(memory_layer("sha256:" + hex, gzipped));
  }
  const auto config = as_string({{"architecture", "amd64"},
                                  {"os", "linux"},
                                  {"config", nlohmann::json::object()},
                                  {"rootfs", {{"type", "layers"}, {"diff_ids", diff_ids}}}});
  const auto config_hex = write_blob(layout, bytes_of(config));
  const auto manifest = as_string(
      {{"schemaVersion", 2},
       {"mediaType", "application/vnd.oci.image.manifest.v1+json"},
       {"config", {{"mediaType", "application/vnd.oci.image.config.v1+json"},
                   {"digest", "sha256:" + config_hex},
                   {"size", config.size()}}},
       {"layers", layer_descriptors}});
  const auto manifest_hex = write_blob(layout, bytes_of(manifest));
  std::ofstream(layout / "index.json") << as_string(
      {{"schemaVersion", 2},
       {"manifests", {{{"mediaType", "application/vnd.oci.image.manifest.v1+json"},
                       {"digest", "sha256:" + manifest_hex},
                       {"size", manifest.size()},
                       {"annotations", {{"org.opencontainers.image.ref.name", "test"}}}}}}});

  const auto rootfs = work.path / "rootfs";
  REQUIRE(run(fmt::format("umoci raw unpack --rootless --image '{}:test' '{}' >/dev/null 2>&1",
                          layout.string(), rootfs.string())) == 0);
  const auto reference = read_directory(rootfs);
  const auto ours = read_tree(flatten_to_bytes(layers, archive::compression::zstd));

  std::set<std::string> reference_paths, our_paths;
  for (const auto& [path, node] : reference.paths) {
    reference_paths.insert(path);
  }
  for (const auto& [path, node] : ours.paths) {
    our_paths.insert(path);
  }
  REQUIRE(our_paths == reference_paths);

  for (const auto& [path, node] : ours.paths) {
    INFO(path);
    const auto& other = reference.at(path);
    CHECK((node->mode & S_IFMT) == (other.mode & S_IFMT));
    if (!S_ISLNK(node->mode)) {
      CHECK((node->mode & 07777) == (other.mode & 07777));
    }
    CHECK(node->content == other.content);
    if (!S_ISDIR(node->mode)) {
      // The same sets of names share an inode.
      for (const auto& [path2, node2] : ours.paths) {
        if (path2 != path && !S_ISDIR(node2->mode)) {
          INFO(path2);
          CHECK((node == node2) == (reference.paths.at(path) == reference.paths.at(path2)));
        }
      }
    }
  }
}

TEST_CASE("cpio, bsdcpio and gzip accept the output", "[flatten]") {
  const auto layers = make_layers(scenario(true), mixed);
  temp_dir work;
  for (const auto method : {archive::compression::none, archive::compression::gzip,
                            archive::compression::zstd, archive::compression::lz4,
                            archive::compression::xz}) {
    const auto target = work.path / fmt::format("initramfs.{}", archive::to_string(method));
    {
      archive::atomic_output output(target);
      archive::writer<archive::cpio_newc> out(output.fd(), {.compression = {.method = method}});
      compactor::flatten::flatten(layers, out);
      out.finish();
      output.commit();
    }
    const std::map<archive::compression, std::string> decompress = {
        {archive::compression::none, "cat"}, {archive::compression::gzip, "gzip -dc"},
        {archive::compression::zstd, "zstd -dcq"}, {archive::compression::lz4, "lz4 -dcq"},
        {archive::compression::xz, "xz -dc"}};
    const auto list = work.path / "list";
    INFO(archive::to_string(method));
    CHECK(run(fmt::format("{} '{}' | cpio -t --quiet > '{}' 2>&1", decompress.at(method),
                          target.string(), list.string())) == 0);
    std::ifstream listing(list);
    std::set<std::string> names;
    for (std::string line; std::getline(listing, line);) {
      names.insert(line);
    }
    CHECK(names.contains("bin/sh"));
    CHECK(names.contains(long_name));
    CHECK(run(fmt::format("bsdcpio -it < '{}' > /dev/null 2>&1", target.string())) == 0);
  }
  CHECK(run(fmt::format("gzip -t '{}'", (work.path / "initramfs.gzip").string())) == 0);
  CHECK(run(fmt::format("xz -t '{}'", (work.path / "initramfs.xz").string())) == 0);
  // The kernel reads only the legacy lz4 format (magic 0x184C2102, little-endian).
  std::ifstream lz4(work.path / "initramfs.lz4", std::ios::binary);
  unsigned char magic[4] = {};
  lz4.read(reinterpret_cast<char*>(magic), 4);
  CHECK(magic[0] == 0x02);
  CHECK(magic[1] == 0x21);
  CHECK(magic[2] == 0x4c);
  CHECK(magic[3] == 0x18);
}
