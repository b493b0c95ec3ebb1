// An image's layers plus the host layer (init, launch configuration, transferred files) become
// one initramfs, read back here the way the kernel unpacks it.
#include <catch2/catch.hpp>

#include <archive.h>
#include <archive_entry.h>
#include <elf.h>

#include <fstream>
#include <memory>

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

// --- Sizes, limits and guest memory -----------------------------------------------------------

namespace {

// The bytes an archive file decompresses to, counted by libarchive's raw reader.
std::uint64_t decompressed_size(const std::filesystem::path& path) {
  std::unique_ptr<::archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_filter_all(a.get());
  archive_read_support_format_raw(a.get());
  REQUIRE(archive_read_open_filename(a.get(), path.c_str(), 65536) == ARCHIVE_OK);
  ::archive_entry* entry = nullptr;
  REQUIRE(archive_read_next_header(a.get(), &entry) == ARCHIVE_OK);
  std::uint64_t total = 0;
  std::vector<char> buffer(65536);
  for (la_ssize_t n; (n = archive_read_data(a.get(), buffer.data(), buffer.size())) > 0;) {
    total += static_cast<std::uint64_t>(n);
  }
  return total;
}

image::resolved_image image_with_file_of(std::size_t bytes) {
  auto image = test_image();
  image.layers.push_back(memory_layer(
      "sha256:big", make_tar({file("big", std::string(bytes, 'z'))}, layer_compression::zstd)));
  return image;
}

} // namespace

TEST_CASE("initramfs: the builder reports the archive's size before and after compression",
          "[unit]") {
  scratch_directory scratch;
  const auto output = scratch.path / "out.cpio.zst";
  const auto result = initramfs::build(image_with_file_of(6 << 20), test_options(), output);
  CHECK(result.size.compressed == std::filesystem::file_size(output));
  CHECK(result.size.uncompressed == decompressed_size(output));
  CHECK(result.size.uncompressed > (6 << 20));
  CHECK(result.size.compressed < (1 << 20));
  CHECK(result.size.entries == result.statistics.entries_written);
}

TEST_CASE("initramfs: pages and files are counted once per inode", "[unit]") {
  scratch_directory scratch;
  const auto build_with = [&](std::vector<tar_item> extra) {
    auto image = test_image();
    extra.insert(extra.begin(), file("big", std::string(1 << 20, 'b')));
    image.layers.push_back(memory_layer("sha256:extra", make_tar(extra, layer_compression::none)));
    return initramfs::build(image, test_options(), scratch.path / "out").size;
  };
  const auto alone = build_with({});
  const auto linked = build_with({hardlink("big-link", "big")});
  const auto copied = build_with({file("big-copy", std::string(1 << 20, 'b')),
                                  file("small", "x")});
  CHECK(alone.page_bytes % 4096 == 0);
  CHECK(alone.page_bytes > (1 << 20));
  CHECK(linked.page_bytes == alone.page_bytes);
  CHECK(linked.inodes == alone.inodes);
  CHECK(linked.entries == alone.entries + 2); // the link, and the target written again with it
  CHECK(copied.page_bytes == alone.page_bytes + (1 << 20) + 4096);
  CHECK(copied.inodes == alone.inodes + 2);
  CHECK(alone.inodes <= alone.entries);
}

TEST_CASE("initramfs: an initramfs that cannot unpack in guest memory is refused", "[unit]") {
  constexpr std::uint64_t mib = 1 << 20;
  const std::uint64_t kernel = 12 * mib;
  // 80 MiB less the kernel, 2 MiB compressed, 1.25 MiB of struct page and a 2 MiB per-CPU
  // chunk leaves 62.75 MiB free; a tmpfs root holds half of it, in bytes and in inodes.
  const auto room =
      initramfs::capacity_of(80 * mib, kernel, 2 * mib, initramfs::root_filesystem::tmpfs);
  CHECK(room.bytes == 8032 * 4096);
  CHECK(room.inodes == 8032);

  initramfs::archive_size size{.compressed = 2 * mib, .inodes = 100, .page_bytes = 31 * mib};
  CHECK_NOTHROW(initramfs::check_fits_in_guest(size, kernel, 80));
  size.page_bytes = 32 * mib;
  const auto needed = initramfs::memory_needed_mib(size, kernel, initramfs::root_filesystem::tmpfs);
  CHECK(needed == 82);
  CHECK_THROWS_WITH(initramfs::check_fits_in_guest(size, kernel, 80),
                    Catch::Contains("unpacks to 32 MiB in 100 files") &&
                        Catch::Contains("with --mem-size-mb 80") &&
                        Catch::Contains("holds at most 31 MiB and 8032 files") &&
                        Catch::Contains("give --mem-size-mb 82 or more"));
  CHECK_NOTHROW(initramfs::check_fits_in_guest(size, kernel, needed));

  // As many files as there are free pages: the inode limit, not the bytes.
  size = {.compressed = 2 * mib, .inodes = 8033, .page_bytes = 0};
  CHECK_THROWS_WITH(initramfs::check_fits_in_guest(size, kernel, 80), Catch::Contains("8033"));

  // A ramfs root has neither limit; only the memory the kernel leaves free.
  CHECK(initramfs::root_filesystem_for("console=ttyS0 rootfstype=ramfs") ==
        initramfs::root_filesystem::ramfs);
  CHECK(initramfs::root_filesystem_for("console=ttyS0") == initramfs::root_filesystem::tmpfs);
  CHECK_NOTHROW(
      initramfs::check_fits_in_guest(size, kernel, 80, initramfs::root_filesystem::ramfs));
  size.page_bytes = 63 * mib;
  CHECK_THROWS(
      initramfs::check_fits_in_guest(size, kernel, 80, initramfs::root_filesystem::ramfs));
}

TEST_CASE("initramfs: a kernel's memory is its loaded size", "[unit]") {
  scratch_directory scratch;
  const auto write = [&](const std::string& name, const std::vector<unsigned char>& bytes) {
    std::ofstream(scratch.path / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return initramfs::kernel_memory_bytes(scratch.path / name);
  };

  // An ELF file with two loadable segments and a note: the segments' sizes in memory.
  Elf64_Ehdr ehdr{};
  std::memcpy(ehdr.e_ident, ELFMAG, SELFMAG);
  ehdr.e_ident[EI_CLASS] = ELFCLASS64;
  ehdr.e_phoff = sizeof ehdr;
  ehdr.e_phentsize = sizeof(Elf64_Phdr);
  ehdr.e_phnum = 3;
  std::vector<unsigned char> elf(sizeof ehdr + 3 * sizeof(Elf64_Phdr));
  std::memcpy(elf.data(), &ehdr, sizeof ehdr);
  Elf64_Phdr phdrs[3] = {};
  phdrs[0].p_type = PT_LOAD;
  phdrs[0].p_memsz = 5 << 20;
  phdrs[1].p_type = PT_NOTE;
  phdrs[1].p_memsz = 1 << 30;
  phdrs[2].p_type = PT_LOAD;
  phdrs[2].p_memsz = 3 << 20;
  std::memcpy(elf.data() + sizeof ehdr, phdrs, sizeof phdrs);
  CHECK(write("vmlinux", elf) == (8 << 20));

  // A bzImage of boot protocol 2.15: init_size.
  std::vector<unsigned char> bzimage(0x400);
  std::memcpy(bzimage.data() + 0x202, "HdrS", 4);
  bzimage[0x206] = 0x0f;
  bzimage[0x207] = 0x02;
  bzimage[0x262] = 0x40; // 0x00400000: 4 MiB
  CHECK(write("bzImage", bzimage) == (4 << 20));

  CHECK(write("other", std::vector<unsigned char>(1234)) == 1234);
}

TEST_CASE("initramfs: the sizes recorded beside a cached initramfs are read back only when "
          "they match it", "[unit]") {
  scratch_directory scratch;
  const auto output = scratch.path / "cached.cpio.zst";
  CHECK_FALSE(initramfs::read_size_record(output));

  const auto result = initramfs::build(image_with_file_of(1 << 20), test_options(), output);
  CHECK_FALSE(initramfs::read_size_record(output)); // built, not yet recorded
  initramfs::write_size_record(output, result.size);
  const auto recorded = initramfs::read_size_record(output);
  REQUIRE(recorded);
  CHECK(recorded->uncompressed == result.size.uncompressed);
  CHECK(recorded->compressed == result.size.compressed);
  CHECK(recorded->entries == result.size.entries);
  CHECK(recorded->inodes == result.size.inodes);
  CHECK(recorded->page_bytes == result.size.page_bytes);

  // A record of another file (the initramfs replaced, a torn write) is no record.
  std::ofstream(output, std::ios::app) << "more";
  CHECK_FALSE(initramfs::read_size_record(output));
  std::ofstream(initramfs::size_record_path(output)) << "{\"uncompressed\": ";
  CHECK_FALSE(initramfs::read_size_record(output));
}

TEST_CASE("initramfs: the flattener's limits apply to the build and leave no output",
          "[unit]") {
  scratch_directory scratch;
  auto options = test_options();
  options.flatten.max_uncompressed_bytes = 1 << 20;
  CHECK_THROWS_WITH(initramfs::build(image_with_file_of(2 << 20), options, scratch.path / "out"),
                    Catch::Contains("layer 2 (sha256:big)") &&
                        Catch::Contains("beyond the limit of 1 MiB") && Catch::Contains("big"));
  CHECK(std::filesystem::is_empty(scratch.path));

  options = test_options();
  options.flatten.max_entries = 3;
  CHECK_THROWS_WITH(initramfs::build(test_image(), options, scratch.path / "out"),
                    Catch::Contains("more than 3 entries"));
  CHECK(std::filesystem::is_empty(scratch.path));
}

TEST_CASE("initramfs: a file's own header proves what size it can", "[unit]") {
  scratch_directory scratch;
  const auto write = [&](const std::string& name, const std::vector<unsigned char>& bytes) {
    std::ofstream(scratch.path / name, std::ios::binary)
        .write(reinterpret_cast<const char*>(bytes.data()),
               static_cast<std::streamsize>(bytes.size()));
    return initramfs::size_from_file(scratch.path / name);
  };

  // An uncompressed cpio is its own size.
  const auto cpio = initramfs::build(test_image(), [] {
    auto options = test_options();
    options.compression.method = archive::compression::none;
    return options;
  }(), scratch.path / "plain.cpio");
  const auto plain = initramfs::size_from_file(scratch.path / "plain.cpio");
  CHECK(plain.uncompressed == cpio.size.uncompressed);
  CHECK(plain.compressed == cpio.size.compressed);

  // zstd frame headers (RFC 8878, 3.1.1.1): single segment with a 4-byte content size; a
  // window descriptor, a 1-byte dictionary ID and a 2-byte size (which counts from 256);
  // and a frame that does not say.
  const auto four = write("four.zst", {0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0x00, 0x00, 0x00, 0x40, 0});
  CHECK(four.uncompressed == (std::uint64_t{1} << 30));
  CHECK(four.compressed == 10);
  const auto two = write("two.zst", {0x28, 0xb5, 0x2f, 0xfd, 0x41, 0x58, 0x07, 0x00, 0x01, 0});
  CHECK(two.uncompressed == 256 + 256);
  CHECK(write("silent.zst", {0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x58, 0, 0}).uncompressed == 0);
  CHECK(write("short.zst", {0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x01}).uncompressed == 0);

  // What this program writes: zstd streamed by libarchive, with no content size in its frame.
  const auto ours = initramfs::build(test_image(), test_options(), scratch.path / "ours.zst");
  const auto streamed = initramfs::size_from_file(scratch.path / "ours.zst");
  CHECK(streamed.compressed == ours.size.compressed);
  CHECK(streamed.uncompressed <= ours.size.uncompressed);

  // gzip's ISIZE is not trusted.
  CHECK(write("any.gz", {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff}).uncompressed == 0);
}
