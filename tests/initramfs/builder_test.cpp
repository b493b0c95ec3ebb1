// An image's layers plus the host layer (init, launch configuration, transferred files) become
// one initramfs, read back here the way the kernel unpacks it.
#include <catch2/catch.hpp>

#include <fstream>

#include <compactor/initramfs/builder.hpp>

#include "../flatten/image_tree.hpp"

using namespace compactor;
using namespace compactor::testing;

namespace {

struct scratch_directory {
  std::filesystem::path path;
  scratch_directory() {
    char name[] = "/tmp/compactor-initramfs-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
  }
  ~scratch_directory() { std::filesystem::remove_all(path); }
};

std::vector<std::byte> read_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(file)), {});
  std::vector<std::byte> result(bytes.size());
  std::memcpy(result.data(), bytes.data(), bytes.size());
  return result;
}

image::resolved_image test_image() {
  image::resolved_image image;
  image.config.entrypoint = {"/bin/app"};
  image.config.cmd = {"--serve"};
  image.config.env = {"PATH=/usr/bin:/bin", "MODE=image"};
  image.config.working_dir = "/srv";
  image.config.user = "app";
  image.layers.push_back(memory_layer(
      "sha256:bottom", make_tar({dir("tmp", 01777), dir("etc"), file("etc/motd", "image motd\n"),
                                 dir("bin"), file("bin/app", "#!/bin/sh\n", 0755)},
                                layer_compression::gzip)));
  return image;
}

const std::string init_program = "\x7f" "ELF pretend init";

initramfs::build_options test_options() {
  initramfs::build_options options;
  options.init_binary = std::as_bytes(std::span(init_program.data(), init_program.size()));
  return options;
}

} // namespace

TEST_CASE("initramfs: the init and its launch configuration sit under /.compactor", "[unit]") {
  scratch_directory scratch;
  auto options = test_options();
  options.launch.env = {"MODE=user", "EXTRA=1"};
  options.launch.command = {"--once"};

  const auto result = initramfs::build(test_image(), options, scratch.path / "out.cpio.zst");
  const auto tree = read_tree(read_file(scratch.path / "out.cpio.zst"));

  CHECK(tree.problems.empty());
  CHECK(tree.at(".compactor/init").content == init_program);
  CHECK((tree.at(".compactor/init").mode & 0777) == 0755);
  const auto launch = guest::parse_launch_config(tree.at(".compactor/launch").content);
  CHECK(launch == result.launch);
  CHECK(launch.argv() == std::vector<std::string>{"/bin/app", "--once"});
  CHECK(launch.env == std::vector<std::string>{"PATH=/usr/bin:/bin", "MODE=user", "EXTRA=1"});
  CHECK(launch.workdir == "/srv");
  CHECK(launch.user == "app");
  CHECK(tree.at("etc/motd").content == "image motd\n");
}

TEST_CASE("initramfs: --entrypoint replaces ENTRYPOINT and drops the image's CMD", "[unit]") {
  initramfs::overrides user;
  user.entrypoint = std::vector<std::string>{"/bin/sh", "-c"};
  auto launch = initramfs::make_launch_config(test_image().config, user);
  CHECK(launch.argv() == std::vector<std::string>{"/bin/sh", "-c"});

  user.command = {"echo hi"};
  launch = initramfs::make_launch_config(test_image().config, user);
  CHECK(launch.argv() == std::vector<std::string>{"/bin/sh", "-c", "echo hi"});
}

TEST_CASE("initramfs: transferred files replace image files, keep image directories and get "
          "parents",
          "[unit]") {
  scratch_directory scratch;
  const auto data = scratch.path / "data";
  std::filesystem::create_directories(data / "nested");
  std::ofstream(data / "a.txt") << "alpha\n";
  std::ofstream(data / "nested" / "b.txt") << "beta\n";
  std::filesystem::create_symlink("a.txt", data / "link");
  std::ofstream(scratch.path / "motd") << "host motd\n";

  auto options = test_options();
  options.transfers = {{data, "/app/data"}, {scratch.path / "motd", "/etc/motd"},
                       {scratch.path / "motd", "/tmp/in-tmp"}};
  initramfs::build(test_image(), options, scratch.path / "out.cpio");
  const auto tree = read_tree(read_file(scratch.path / "out.cpio"));

  CHECK(tree.problems.empty());
  CHECK(tree.at("app/data/a.txt").content == "alpha\n");
  CHECK(tree.at("app/data/nested/b.txt").content == "beta\n");
  CHECK(tree.at("app/data/link").content == "a.txt");
  CHECK(S_ISDIR(tree.at("app").mode));
  CHECK(tree.at("etc/motd").content == "host motd\n");
  CHECK((tree.at("tmp").mode & 07777) == 01777); // the image's directory, not a placeholder
  CHECK(tree.at("tmp/in-tmp").content == "host motd\n");
}

TEST_CASE("initramfs: the same image and options give the same bytes", "[unit]") {
  scratch_directory scratch;
  std::ofstream(scratch.path / "file") << "content\n";
  auto options = test_options();
  options.transfers = {{scratch.path / "file", "/file"}};

  initramfs::build(test_image(), options, scratch.path / "one");
  initramfs::build(test_image(), options, scratch.path / "two");

  CHECK(read_file(scratch.path / "one") == read_file(scratch.path / "two"));
}

TEST_CASE("initramfs: a missing transfer source fails and leaves no output", "[unit]") {
  scratch_directory scratch;
  auto options = test_options();
  options.transfers = {{scratch.path / "missing", "/x"}};

  CHECK_THROWS_WITH(initramfs::build(test_image(), options, scratch.path / "out"),
                    Catch::Contains("missing"));
  CHECK_FALSE(std::filesystem::exists(scratch.path / "out"));
  CHECK(std::distance(std::filesystem::directory_iterator(scratch.path),
                      std::filesystem::directory_iterator{}) == 0);
}

TEST_CASE("initramfs: --dns writes resolv.conf and refuses a loopback resolver", "[unit]") {
  scratch_directory scratch;
  auto options = test_options();
  options.dns = {"10.0.2.3", "2001:db8::53"};
  initramfs::build(test_image(), options, scratch.path / "out");
  const auto tree = read_tree(read_file(scratch.path / "out"));
  CHECK(tree.at("etc/resolv.conf").content == "nameserver 10.0.2.3\nnameserver 2001:db8::53\n");

  CHECK_THROWS_WITH(initramfs::resolv_conf({"127.0.0.53"}), Catch::Contains("loopback"));
  CHECK_THROWS_WITH(initramfs::resolv_conf({"::1"}), Catch::Contains("loopback"));
  CHECK_THROWS_WITH(initramfs::resolv_conf({"resolver"}), Catch::Contains("not an IP"));
}

TEST_CASE("initramfs: --rootfs-only writes the image's files and nothing else", "[unit]") {
  scratch_directory scratch;
  auto options = test_options();
  options.rootfs_only = true;
  options.dns = {"10.0.2.3"};
  initramfs::build(test_image(), options, scratch.path / "out");
  const auto tree = read_tree(read_file(scratch.path / "out"));
  CHECK(tree.has("etc/motd"));
  CHECK_FALSE(tree.has(".compactor/init"));
  CHECK_FALSE(tree.has("etc/resolv.conf"));
}
