// The archive writer: entries added by the caller, reproducible bytes, atomic output.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <span>
#include <stdexcept>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <compactor/archive/output.hpp>
#include <compactor/archive/writer.hpp>

#include "../flatten/image_tree.hpp"

namespace {

namespace archive = compactor::archive;
namespace fs = std::filesystem;

struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string pattern = (fs::temp_directory_path() / "compactor-archive-XXXXXX").string();
    path = ::mkdtemp(pattern.data());
  }
  ~temp_dir() { fs::remove_all(path); }
};

std::vector<std::byte> read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::vector<char> chars((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  std::vector<std::byte> bytes(chars.size());
  std::memcpy(bytes.data(), chars.data(), chars.size());
  return bytes;
}

template <typename Format>
void write_sample(const fs::path& target, const fs::path& host_file, archive::compression method) {
  archive::atomic_output output(target);
  archive::writer<Format> out(output.fd(), {.compression = {.method = method}});
  out.add_directory("etc");
  out.add_file("etc/config.json", std::string_view(R"({"entrypoint":["/bin/sh"]})"),
               archive::with_permissions(0600));
  out.add_directory("sbin", archive::with_permissions(0700));
  out.add_file_from_host("sbin/init", host_file, archive::with_permissions(0755));
  out.add_symlink("init", "/sbin/init");
  out.finish();
  output.commit();
}

} // namespace

TEMPLATE_TEST_CASE("the writer adds files from bytes and from the host, directories and "
                   "symlinks",
                   "[archive]", archive::cpio_newc, archive::tar_pax) {
  temp_dir work;
  const auto host_file = work.path / "host-init";
  const std::string host_content(200'000, 'i');
  std::ofstream(host_file, std::ios::binary) << host_content;
  const auto target = work.path / "out";
  write_sample<TestType>(target, host_file, archive::compression::gzip);

  const auto tree = compactor::testing::read_tree(read_file(target));
  CHECK(tree.problems.empty());
  CHECK(S_ISDIR(tree.at("etc").mode));
  CHECK(tree.at("etc/config.json").content == R"({"entrypoint":["/bin/sh"]})");
  CHECK((tree.at("etc/config.json").mode & 07777) == 0600);
  CHECK((tree.at("sbin").mode & 07777) == 0700);
  CHECK(tree.at("sbin/init").content == host_content);
  CHECK((tree.at("sbin/init").mode & 07777) == 0755);
  CHECK(S_ISLNK(tree.at("init").mode));
  CHECK(tree.at("init").content == "/sbin/init");
  CHECK(tree.at("init").mtime == 0);
}

TEST_CASE("the writer's bytes do not depend on the time or the host", "[archive]") {
  temp_dir work;
  const auto host_file = work.path / "host-init";
  std::ofstream(host_file, std::ios::binary) << "init";
  for (const auto method : {archive::compression::none, archive::compression::gzip,
                            archive::compression::zstd, archive::compression::lz4,
                            archive::compression::xz}) {
    INFO(archive::to_string(method));
    write_sample<archive::cpio_newc>(work.path / "a", host_file, method);
    ::sleep(method == archive::compression::gzip ? 1 : 0); // a gzip MTIME would now differ
    ::utimensat(AT_FDCWD, host_file.c_str(), nullptr, 0);
    write_sample<archive::cpio_newc>(work.path / "b", host_file, method);
    const auto a = read_file(work.path / "a");
    CHECK(a == read_file(work.path / "b"));
    if (method == archive::compression::gzip) {
      // RFC 1952, 2.3: MTIME (bytes 4-7) is zero, and FLG (byte 3) announces no file name.
      REQUIRE(a.size() > 10);
      CHECK(a[3] == std::byte{0});
      CHECK(a[4] == std::byte{0});
      CHECK(a[5] == std::byte{0});
      CHECK(a[6] == std::byte{0});
      CHECK(a[7] == std::byte{0});
    }
  }
}

TEST_CASE("an output that is not committed leaves no file behind", "[archive]") {
  temp_dir work;
  const auto target = work.path / "initramfs.cpio";
  {
    archive::atomic_output output(target);
    archive::writer<archive::cpio_newc> out(output.fd(), {});
    out.add_file("x", std::string_view("half"));
  }
  CHECK(fs::is_empty(work.path));

  std::ofstream(target) << "previous";
  try {
    archive::atomic_output output(target);
    archive::writer<archive::cpio_newc> out(output.fd(), {});
    out.add_directory("d");
    throw std::runtime_error("a layer failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(std::distance(fs::directory_iterator(work.path), fs::directory_iterator()) == 1);
  std::ifstream previous(target);
  std::string text;
  previous >> text;
  CHECK(text == "previous");

  {
    archive::atomic_output output(target);
    archive::writer<archive::cpio_newc> out(output.fd(), {});
    out.add_directory("d");
    out.finish();
    output.commit();
  }
  CHECK(std::distance(fs::directory_iterator(work.path), fs::directory_iterator()) == 1);
  CHECK(compactor::testing::read_tree(read_file(target)).has("d"));
  CHECK((fs::status(target).permissions() & fs::perms::all) ==
        (fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
         fs::perms::others_read));
}

TEST_CASE("the writer refuses content that does not match the announced size", "[archive]") {
  std::FILE* file = std::tmpfile();
  archive::writer<archive::cpio_newc> out(fileno(file), {});
  out.begin(archive::file_entry("f", 3, {}));
  const std::string four = "four";
  CHECK_THROWS_WITH(out.write(std::as_bytes(std::span(four.data(), four.size()))),
                    Catch::Contains("more content"));
  CHECK_THROWS_WITH(out.add_directory("d"), Catch::Contains("missing"));
  std::fclose(file);
}
