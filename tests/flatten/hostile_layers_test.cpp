// Hostile layers: names and link targets that climb or start at the root, symlinked parents,
// hard links to removed or missing files, malformed whiteouts, duplicate entries, a gzip bomb
// and a flood of entries. Each ends in a tree that stays inside the root, checked entry by
// entry in the order the kernel unpacks them, or in one error naming the layer and the entry.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <fmt/format.h>

#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>

#include "image_tree.hpp"

namespace {

using namespace compactor::testing;
namespace archive = compactor::archive;
namespace flatten = compactor::flatten;
using compactor::image::layer;

constexpr std::uint64_t mib = std::uint64_t{1} << 20;
constexpr std::uint64_t gib = std::uint64_t{1} << 30;

std::vector<layer> make_layers(const std::vector<std::vector<tar_item>>& items) {
  std::vector<layer> layers;
  for (std::size_t i = 0; i < items.size(); ++i) {
    layers.push_back(memory_layer(fmt::format("sha256:layer{}", i),
                                  make_tar(items[i], layer_compression::none)));
  }
  return layers;
}

std::vector<std::byte> flatten_to_cpio(const std::vector<layer>& layers,
                                       const flatten::options& options = {}) {
  std::FILE* file = std::tmpfile();
  archive::writer<archive::cpio_newc> out(fileno(file),
                                          {.compression = {.method = archive::compression::none}});
  try {
    flatten::flatten(layers, out, options);
    out.finish();
  } catch (...) {
    std::fclose(file);
    throw;
  }
  std::fflush(file);
  std::vector<std::byte> bytes(static_cast<std::size_t>(std::ftell(file)));
  std::rewind(file);
  REQUIRE(std::fread(bytes.data(), 1, bytes.size(), file) == bytes.size());
  std::fclose(file);
  return bytes;
}

// Replays a cpio in order, the way init/initramfs.c creates its entries, and lists every entry
// that could reach outside the root or through a symlink: a name that is absolute or holds
// "", "." or ".." parts, an ancestor that is not a directory at that moment (the kernel's
// open() and mkdir() would follow a symlink there), or a non-directory replacing a directory
// that still has children (the kernel's rmdir() fails and the entry lands elsewhere or not
// at all).
std::vector<std::string> unsafe_entries(std::span<const std::byte> bytes) {
  std::vector<std::string> problems;
  std::map<std::string, mode_t> types; // path -> S_IFMT bits, as unpacked so far
  std::unique_ptr<::archive, decltype(&archive_read_free)> a(archive_read_new(), archive_read_free);
  archive_read_support_format_cpio(a.get());
  REQUIRE(archive_read_open_memory(a.get(), bytes.data(), bytes.size()) == ARCHIVE_OK);
  ::archive_entry* e = nullptr;
  while (archive_read_next_header(a.get(), &e) == ARCHIVE_OK) {
    const std::string path = archive_entry_pathname(e);
    const mode_t type = archive_entry_filetype(e);
    if (path.empty() || path.front() == '/') {
      problems.push_back(path + ": not relative to the root");
      continue;
    }
    bool bad_part = false;
    for (std::size_t start = 0; start <= path.size();) {
      const auto slash = std::min(path.find('/', start), path.size());
      const auto part = std::string_view(path).substr(start, slash - start);
      bad_part = bad_part || part.empty() || part == "." || part == "..";
      start = slash + 1;
    }
    if (bad_part) {
      problems.push_back(path + ": an empty, \".\" or \"..\" part");
      continue;
    }
    flatten::for_each_ancestor(path, [&](std::string_view ancestor) {
      const auto found = types.find(std::string(ancestor));
      if (found == types.end() || found->second != AE_IFDIR) {
        problems.push_back(fmt::format("{}: {} is not a directory there", path, ancestor));
      }
    });
    if (const auto found = types.find(path);
        found != types.end() && found->second == AE_IFDIR && type != AE_IFDIR) {
      const auto child = types.lower_bound(path + "/");
      if (child != types.end() && child->first.starts_with(path + "/")) {
        problems.push_back(path + ": replaces a directory that has children");
      }
    }
    types[path] = type;
  }
  return problems;
}

// A tree that must be safe: read back, with its unsafe entries checked empty.
tree safe_tree(const std::vector<layer>& layers) {
  const auto bytes = flatten_to_cpio(layers);
  const auto problems = unsafe_entries(bytes);
  for (const auto& problem : problems) {
    UNSCOPED_INFO(problem);
  }
  CHECK(problems.empty());
  auto result = read_tree(bytes);
  CHECK(result.problems.empty());
  return result;
}

std::string flatten_error(const std::vector<layer>& layers, const flatten::options& options = {}) {
  try {
    flatten_to_cpio(layers, options);
  } catch (const compactor::error& failure) {
    return failure.what();
  }
  FAIL("the layers flattened without an error");
  return {};
}

// --- Generated layers: streamed, never held whole in memory -----------------------------------

// One 512-byte ustar header (POSIX.1-2008, pax, "ustar Interchange Format").
void ustar_header(char* block, std::string_view name, char type, std::uint64_t size) {
  std::memset(block, 0, 512);
  std::memcpy(block, name.data(), std::min<std::size_t>(name.size(), 100));
  std::snprintf(block + 100, 8, "%07o", type == '5' ? 0755u : 0644u);
  std::snprintf(block + 108, 8, "%07o", 0u);
  std::snprintf(block + 116, 8, "%07o", 0u);
  if (size < (std::uint64_t{1} << 33)) {
    std::snprintf(block + 124, 12, "%011llo", static_cast<unsigned long long>(size));
  } else {
    // Too large for 11 octal digits: base-256, big-endian, marked by the top bit (GNU tar,
    // which libarchive and the pax readers accept).
    block[124] = static_cast<char>(0x80);
    for (int i = 0; i < 8; ++i) {
      block[135 - i] = static_cast<char>((size >> (8 * i)) & 0xff);
    }
  }
  std::snprintf(block + 136, 12, "%011o", 1'600'000'000u);
  block[156] = type;
  std::memcpy(block + 257, "ustar", 6);
  std::memcpy(block + 263, "00", 2);
  std::memset(block + 148, ' ', 8);
  unsigned sum = 0;
  for (int i = 0; i < 512; ++i) {
    sum += static_cast<unsigned char>(block[i]);
  }
  std::snprintf(block + 148, 8, "%06o", sum);
}

// An uncompressed tar of `count` empty entries, made as it is read: one directory per
// thousand entries, each followed by its 999 files.
layer entry_flood(std::uint64_t count) {
  layer result;
  result.digest = "sha256:flood";
  result.open = [count]() -> compactor::image::byte_reader {
    auto next = std::make_shared<std::uint64_t>(0);
    return [count, next](std::span<std::byte> buffer) -> std::size_t {
      std::size_t used = 0;
      while (buffer.size() - used >= 512 && *next < count + 2) {
        auto* block = reinterpret_cast<char*>(buffer.data() + used);
        const auto i = *next;
        if (i >= count) {
          std::memset(block, 0, 512); // the two end-of-archive blocks
        } else if (i % 1000 == 0) {
          ustar_header(block, fmt::format("d{}/", i / 1000), '5', 0);
        } else {
          ustar_header(block, fmt::format("d{}/f{}", i / 1000, i % 1000), '0', 0);
        }
        used += 512;
        ++*next;
      }
      return used;
    };
  };
  return result;
}

// Raw deflate (RFC 1951) of `input` from a fresh compressor, ending on a byte boundary with no
// final block: such pieces refer to nothing before them, so any sequence of them is a valid
// deflate stream once a final block ends it.
std::vector<std::byte> deflate_piece(std::span<const std::byte> input) {
  z_stream z{};
  REQUIRE(deflateInit2(&z, 9, Z_DEFLATED, -15, 9, Z_DEFAULT_STRATEGY) == Z_OK);
  std::vector<std::byte> out(deflateBound(&z, input.size()) + 64);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(input.data()));
  z.avail_in = static_cast<uInt>(input.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  REQUIRE(deflate(&z, Z_FULL_FLUSH) == Z_OK);
  REQUIRE(z.avail_in == 0);
  out.resize(out.size() - z.avail_out);
  deflateEnd(&z);
  return out;
}

struct gzip_bomb {
  std::vector<std::byte> blob;
  std::uint64_t expanded = 0; // bytes of tar it decompresses to
};

// A gzip'd tar of `files` files of `file_size` zeros (a multiple of 1 MiB). One MiB of zeros is
// compressed once and its piece repeated, so a 10 GiB bomb takes about a second to make and
// 10 MiB to hold; the expansion is never made.
gzip_bomb make_gzip_bomb(std::uint64_t files, std::uint64_t file_size) {
  gzip_bomb bomb;
  const std::vector<std::byte> zeros(mib);
  const auto zeros_piece = deflate_piece(zeros);
  const auto zeros_crc = crc32(0, reinterpret_cast<const Bytef*>(zeros.data()), mib);

  const std::byte gzip_header[] = {std::byte{0x1f}, std::byte{0x8b}, std::byte{8},   std::byte{0},
                                   std::byte{0},    std::byte{0},    std::byte{0},   std::byte{0},
                                   std::byte{0},    std::byte{0xff}}; // RFC 1952, 2.3
  bomb.blob.assign(std::begin(gzip_header), std::end(gzip_header));
  uLong crc = crc32(0, nullptr, 0);
  const auto append = [&](std::span<const std::byte> input) {
    const auto piece = deflate_piece(input);
    bomb.blob.insert(bomb.blob.end(), piece.begin(), piece.end());
    crc = crc32_combine(crc, crc32(0, reinterpret_cast<const Bytef*>(input.data()),
                                   static_cast<uInt>(input.size())),
                        static_cast<z_off_t>(input.size()));
    bomb.expanded += input.size();
  };
  for (std::uint64_t file = 0; file < files; ++file) {
    std::array<std::byte, 512> header{};
    ustar_header(reinterpret_cast<char*>(header.data()), fmt::format("zeros{}", file), '0',
                 file_size);
    append(header);
    for (std::uint64_t done = 0; done < file_size; done += mib) {
      bomb.blob.insert(bomb.blob.end(), zeros_piece.begin(), zeros_piece.end());
      crc = crc32_combine(crc, zeros_crc, static_cast<z_off_t>(mib));
      bomb.expanded += mib;
    }
  }
  append(std::vector<std::byte>(1024)); // the end-of-archive blocks

  // An empty final block with fixed codes (BFINAL 1, BTYPE 01, end-of-block), then CRC32 and
  // ISIZE, little-endian (RFC 1952, 2.3.1).
  bomb.blob.push_back(std::byte{0x03});
  bomb.blob.push_back(std::byte{0x00});
  for (const auto value : {static_cast<std::uint32_t>(crc),
                           static_cast<std::uint32_t>(bomb.expanded & 0xffffffff)}) {
    for (int shift = 0; shift < 32; shift += 8) {
      bomb.blob.push_back(static_cast<std::byte>((value >> shift) & 0xff));
    }
  }
  return bomb;
}

// --- A run in a child process, for its time and peak memory -----------------------------------

struct measured {
  std::string error; // empty: no exception
  double seconds = 0;
  std::int64_t peak_growth_kib = 0; // peak RSS above the RSS at the start
};

std::int64_t status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with(field)) {
      return std::stoll(line.substr(std::strlen(field)));
    }
  }
  return -1;
}

template <typename Work>
measured in_child(Work&& work) {
  int pipe_fds[2];
  REQUIRE(::pipe(pipe_fds) == 0);
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    ::close(pipe_fds[0]);
    const auto start_kib = status_kib("VmRSS:");
    const auto started = std::chrono::steady_clock::now();
    std::string error;
    try {
      work();
    } catch (const std::exception& failure) {
      error = failure.what();
      if (error.empty()) {
        error = "an exception without a message";
      }
    }
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - started;
    const auto report = fmt::format("{} {} {}", took.count(), status_kib("VmHWM:") - start_kib,
                                    error);
    [[maybe_unused]] const auto wrote = ::write(pipe_fds[1], report.data(), report.size());
    ::_exit(0);
  }
  ::close(pipe_fds[1]);
  std::string report;
  char buffer[4096];
  for (ssize_t got; (got = ::read(pipe_fds[0], buffer, sizeof buffer)) > 0;) {
    report.append(buffer, static_cast<std::size_t>(got));
  }
  ::close(pipe_fds[0]);
  int status = 0;
  REQUIRE(::waitpid(child, &status, 0) == child);
  REQUIRE((WIFEXITED(status) && WEXITSTATUS(status) == 0));

  measured result;
  const auto first = report.find(' ');
  const auto second = report.find(' ', first + 1);
  REQUIRE(second != std::string::npos);
  result.seconds = std::stod(report.substr(0, first));
  result.peak_growth_kib = std::stoll(report.substr(first + 1, second - first - 1));
  result.error = report.substr(second + 1);
  return result;
}

// Flattens into /dev/null, the spool in `spool`.
void flatten_to_null(const std::vector<layer>& layers, const flatten::options& options) {
  compactor::unique_fd sink(::open("/dev/null", O_WRONLY | O_CLOEXEC));
  archive::writer<archive::cpio_newc> out(sink.get(),
                                          {.compression = {.method = archive::compression::none}});
  flatten::flatten(layers, out, options);
  out.finish();
}

struct scratch_directory {
  std::filesystem::path path;
  scratch_directory() {
    char name[] = "/tmp/compactor-hostile-XXXXXX";
    REQUIRE(::mkdtemp(name) != nullptr);
    path = name;
  }
  ~scratch_directory() { std::filesystem::remove_all(path); }
};

} // namespace

TEST_CASE("hostile: the unpack check flags entries that leave the root or pass a symlink",
          "[flatten]") {
  std::FILE* file = std::tmpfile();
  {
    archive::writer<archive::cpio_newc> out(
        fileno(file), {.compression = {.method = archive::compression::none}});
    out.add_directory("d");
    out.add_file("d/f", "f");
    out.add_symlink("s", "/etc");
    out.add_file("s/passwd", "through the symlink");
    out.add_file("../up", "above");
    out.add_file("/abs", "absolute");
    out.add_file("a/./b", "dot");
    out.add_file("d", "over a directory with children");
    out.finish();
  }
  std::fflush(file);
  std::vector<std::byte> bytes(static_cast<std::size_t>(std::ftell(file)));
  std::rewind(file);
  REQUIRE(std::fread(bytes.data(), 1, bytes.size(), file) == bytes.size());
  std::fclose(file);

  const auto problems = unsafe_entries(bytes);
  const std::vector<std::string> expected = {
      "s/passwd: s is not a directory there", "../up: an empty, \".\" or \"..\" part",
      "/abs: not relative to the root", "a/./b: an empty, \".\" or \"..\" part",
      "d: replaces a directory that has children"};
  CHECK(problems == expected);
}

// --- Names ------------------------------------------------------------------------------------

TEST_CASE("hostile: names with \"..\" stay inside the root or are refused", "[flatten]") {
  // ".." that stays below the root is resolved literally.
  const auto t = safe_tree(make_layers({{dir("a/"), dir("a/b/"), file("a/b/../c", "c"),
                                         file("./a/./b/../../d", "d")}}));
  CHECK(t.at("a/c").content == "c");
  CHECK(t.at("d").content == "d");

  for (const std::string name : {"..", "../x", "a/../../x", "/../x", "a/b/../../../x",
                                 "../.wh.x", "../.wh..wh..opq"}) {
    INFO(name);
    const auto message = flatten_error(make_layers({{dir("a/"), file(name, "x")}}));
    CHECK_THAT(message, Catch::Contains("sha256:layer0") && Catch::Contains('"' + name + '"') &&
                            Catch::Contains("climbs above the image root"));
  }
  for (const std::string target : {"../x", "a/../../x", "/../../x"}) {
    INFO(target);
    const auto message =
        flatten_error(make_layers({{file("x", "x"), hardlink("link", target)}}));
    CHECK_THAT(message, Catch::Contains("sha256:layer0") && Catch::Contains(target) &&
                            Catch::Contains("climbs above the image root"));
  }
}

TEST_CASE("hostile: absolute names and link targets are taken inside the root", "[flatten]") {
  const auto t = safe_tree(make_layers(
      {{file("/etc/passwd", "root"), file("//abs///x", "x"), hardlink("/etc/alias", "/etc/passwd"),
        soft_link("/up", "../../../../etc/shadow"), soft_link("root", "/")}}));
  CHECK(t.at("etc/passwd").content == "root");
  CHECK(t.at("abs/x").content == "x");
  CHECK(t.paths.at("etc/alias") == t.paths.at("etc/passwd"));
  // Symlink targets are the guest's business and kept as they are: the unpacker never
  // follows them, and inside the guest they resolve within its own root.
  CHECK(t.at("up").content == "../../../../etc/shadow");
  CHECK(t.at("root").content == "/");
}

// --- Symlinked parents ------------------------------------------------------------------------

// The entry's path is taken literally in the image (as docker and umoci apply layers): a
// symlink that a lower layer or an earlier entry put where an entry's parent should be is
// replaced by a directory, and nothing is ever written through it.
TEST_CASE("hostile: a symlinked parent never leads an entry elsewhere", "[flatten]") {
  const auto t = safe_tree(make_layers({
      {dir("real/"), soft_link("inside", "real"), soft_link("outside", "../../../.."),
       soft_link("absolute", "/"), soft_link("chain", "inside")},
      {file("inside/f", "upper"), file("outside/f", "upper"), file("absolute/etc/passwd", "x"),
       file("chain/f", "upper"), soft_link("same", "/etc"), file("same/passwd", "same layer"),
       dir("dir-then-link/"), file("dir-then-link/f", "in a directory")},
      {soft_link("dir-then-link", "/etc")},
  }));
  for (const std::string name : {"inside", "outside", "absolute", "chain", "same"}) {
    INFO(name);
    CHECK(S_ISDIR(t.at(name).mode));
  }
  CHECK(t.at("inside/f").content == "upper");
  CHECK(t.at("absolute/etc/passwd").content == "x");
  CHECK(t.at("same/passwd").content == "same layer");
  CHECK_FALSE(t.has("real/f"));
  CHECK(t.paths.size() == 13); // real, 5 directories with their files, etc, dir-then-link

  // An upper symlink replaces a lower directory: what was under it is gone.
  CHECK(S_ISLNK(t.at("dir-then-link").mode));
  CHECK_FALSE(t.has("dir-then-link/f"));
}

TEST_CASE("hostile: a hard link through a symlinked parent names no file", "[flatten]") {
  const auto message = flatten_error(make_layers(
      {{dir("real/"), file("real/t", "t"), soft_link("via", "real")}, {hardlink("x", "via/t")}}));
  // Layer 0 holds a symlink where "via/t" would need a directory: the target cannot exist.
  CHECK_THAT(message, Catch::Contains("sha256:layer1") && Catch::Contains("\"x\"") &&
                          Catch::Contains("\"via/t\"") && Catch::Contains("sha256:layer0"));
}

// --- Hard links -------------------------------------------------------------------------------

TEST_CASE("hostile: hard links to removed, missing or unlinkable targets are errors",
          "[flatten]") {
  struct refused {
    const char* what;
    std::vector<std::vector<tar_item>> layers;
    std::vector<std::string> named;
  };
  const std::vector<refused> cases = {
      {"missing in every layer", {{file("a", "a")}, {hardlink("l", "missing")}},
       {"sha256:layer1", "\"l\"", "missing", "no layer below"}},
      {"whited out by the same layer",
       {{file("t", "t")}, {whiteout(".wh.t"), hardlink("l", "t")}},
       {"sha256:layer1", "\"l\"", "removes"}},
      {"whited out by a layer between", {{file("t", "t")}, {whiteout(".wh.t")},
                                         {hardlink("l", "t")}},
       {"sha256:layer2", "\"l\"", "sha256:layer1", "removes"}},
      {"under an opaque directory",
       {{dir("d/"), file("d/t", "t")}, {dir("d/"), whiteout("d/.wh..wh..opq")},
        {hardlink("l", "d/t")}},
       {"sha256:layer2", "\"l\"", "sha256:layer1", "removes"}},
      {"a directory", {{dir("d/"), hardlink("l", "d")}}, {"sha256:layer0", "\"l\""}},
      {"itself", {{hardlink("l", "l")}}, {"sha256:layer0", "\"l\""}},
  };
  for (const auto& item : cases) {
    INFO(item.what);
    const auto message = flatten_error(make_layers(item.layers));
    for (const auto& part : item.named) {
      CHECK_THAT(message, Catch::Contains(part));
    }
  }
}

// --- Whiteouts --------------------------------------------------------------------------------

TEST_CASE("hostile: \".wh.\", \".wh..\" and \".wh...\" remove nothing", "[flatten]") {
  const auto t = safe_tree(make_layers({
      {dir("d/"), dir("d/e/"), file("d/e/f", "kept"), file("g", "kept")},
      {whiteout(".wh."), whiteout(".wh.."), whiteout(".wh..."), whiteout("d/e/.wh."),
       whiteout("d/e/.wh.."), whiteout("d/e/.wh..."), whiteout("d/.wh..wh."),
       whiteout("d/.wh..wh..opq.x")},
  }));
  CHECK(t.at("d/e/f").content == "kept");
  CHECK(t.at("g").content == "kept");
  for (const auto& [path, node] : t.paths) {
    CHECK_FALSE(std::string_view(path).find(".wh.") != std::string_view::npos);
  }
  CHECK(t.paths.size() == 4);
}

// --- Duplicates -------------------------------------------------------------------------------

// Within a layer the last entry for a path wins, as when a tar is extracted; across layers
// the upper one does.
TEST_CASE("hostile: duplicate entries give the last one of the top layer", "[flatten]") {
  const auto t = safe_tree(make_layers({
      {file("x", "lower"), dir("keep/"), file("keep/f", "lower")},
      {file("x", "first"), file("x", "second"), file("y", "file"), soft_link("y", "x"),
       dir("z/", 0700), dir("z/", 0750), soft_link("w", "/etc"), file("w", "file"),
       dir("keep/"), dir("keep/")},
  }));
  CHECK(t.at("x").content == "second");
  CHECK(S_ISLNK(t.at("y").mode));
  CHECK((t.at("z").mode & 07777) == 0750);
  CHECK(S_ISREG(t.at("w").mode));
  CHECK(t.at("keep/f").content == "lower");
}

TEST_CASE("hostile: a layer that turns its own directory into another type is refused",
          "[flatten]") {
  for (const auto& replacement : {file("p", "file"), soft_link("p", "/etc"), hardlink("p", "t")}) {
    const auto message = flatten_error(make_layers(
        {{file("t", "t")}, {dir("p/"), file("p/child", "c"), replacement}}));
    CHECK_THAT(message, Catch::Contains("layer 2 (sha256:layer1)") &&
                            Catch::Contains("\"p\" replaces a directory"));
  }
}

// --- Decompression bomb -----------------------------------------------------------------------

TEST_CASE("hostile: the bomb generator makes gzip'd tars that flatten to their files",
          "[flatten]") {
  const auto bomb = make_gzip_bomb(3, 2 * mib);
  CHECK(bomb.blob.size() < 16 * 1024);

  // zlib checks the whole stream: every block, then CRC32 and ISIZE against the bytes.
  z_stream z{};
  REQUIRE(inflateInit2(&z, 16 + 15) == Z_OK);
  z.next_in = reinterpret_cast<Bytef*>(const_cast<std::byte*>(bomb.blob.data()));
  z.avail_in = static_cast<uInt>(bomb.blob.size());
  std::vector<Bytef> out(256 * 1024);
  int status = Z_OK;
  while (status == Z_OK) {
    z.next_out = out.data();
    z.avail_out = static_cast<uInt>(out.size());
    status = inflate(&z, Z_NO_FLUSH);
  }
  CHECK(status == Z_STREAM_END);
  CHECK(z.total_out == bomb.expanded);
  CHECK(z.avail_in == 0);
  inflateEnd(&z);

  const auto bytes = flatten_to_cpio({memory_layer("sha256:small-bomb", bomb.blob)});
  const auto t = read_tree(bytes);
  CHECK(t.paths.size() == 3);
  CHECK(t.at("zeros2").content == std::string(2 * mib, '\0'));
}

TEST_CASE("hostile: a gzip bomb ends at the uncompressed-bytes limit, in bounded time and "
          "memory", "[flatten]") {
  CHECK(flatten::default_max_uncompressed_bytes == 16 * gib);
  CHECK(flatten::options{}.max_uncompressed_bytes == flatten::default_max_uncompressed_bytes);

  scratch_directory spool;
  flatten::options options;
  options.spool_directory = spool.path;
  options.max_uncompressed_bytes = 256 * mib;

  // 10 GiB in one file: refused at its header, before any content is decompressed.
  const auto one = make_gzip_bomb(1, 10 * gib);
  CHECK(one.expanded > 10 * gib);
  CHECK(one.blob.size() < 16 * mib);
  const auto at_once = in_child([&] {
    flatten_to_null({memory_layer("sha256:one-file-bomb", one.blob)}, options);
  });
  CHECK_THAT(at_once.error, Catch::Contains("layer 1 (sha256:one-file-bomb)") &&
                                Catch::Contains("beyond the limit of 256 MiB") &&
                                Catch::Contains("\"zeros0\""));
  CHECK(at_once.seconds < 5);
  CHECK(at_once.peak_growth_kib < 64 * 1024);

  // 10 GiB in 64 MiB files under a small first layer: decompressed up to the limit.
  const auto many = make_gzip_bomb(160, 64 * mib);
  CHECK(many.expanded > 10 * gib);
  const auto streamed = in_child([&] {
    flatten_to_null({memory_layer("sha256:small", make_tar({file("a", "a")},
                                                           layer_compression::gzip)),
                     memory_layer("sha256:many-file-bomb", many.blob)},
                    options);
  });
  CHECK_THAT(streamed.error, Catch::Contains("layer 2 (sha256:many-file-bomb)") &&
                                 Catch::Contains("beyond the limit of 256 MiB") &&
                                 Catch::Contains("\"zeros3\""));
  CHECK(streamed.seconds < 20);
  CHECK(streamed.peak_growth_kib < 64 * 1024);
}

// --- A flood of entries -----------------------------------------------------------------------

// Measured on the project's machines (release build): a layer of 1,000,000 empty entries
// flattens in about 6 s and takes the process to about 320 MiB, some 310 bytes per entry
// for the per-path state. The default limit therefore sits at 1,000,000; the test lowers
// it to stay fast in a debug build and measures memory up to that point.
TEST_CASE("hostile: a layer of a million entries ends at the entry limit", "[flatten]") {
  CHECK(flatten::default_max_entries == 1'000'000);
  CHECK(flatten::options{}.max_entries == flatten::default_max_entries);

  scratch_directory spool;
  flatten::options options;
  options.spool_directory = spool.path;
  options.max_entries = 100'000;
  const auto run = in_child([&] { flatten_to_null({entry_flood(1'000'000)}, options); });
  CHECK_THAT(run.error, Catch::Contains("layer 1 (sha256:flood)") &&
                            Catch::Contains("more than 100000 entries") &&
                            Catch::Contains("\"d100/\""));
  CHECK(run.seconds < 20);
  CHECK(run.peak_growth_kib < 96 * 1024);

  // Below the limit the same stream flattens, every entry written.
  options.max_entries = 20'000;
  const auto small = in_child([&] { flatten_to_null({entry_flood(20'000)}, options); });
  CHECK(small.error.empty());
}
