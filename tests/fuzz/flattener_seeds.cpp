// Writes the flattener fuzzer's seed corpus into DIRECTORY (made anew): small valid images in
// the fuzzer's input form, layer blobs bottom first joined by its separator, so that mutations
// start from tars that parse and from the cases the flattener has rules for: files,
// directories, symlinks, hard links within and across layers, whiteouts, opaque directories,
// type changes, and the three compressions a layer may have.
// Usage: flattener_seeds DIRECTORY
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "../flatten/image_tree.hpp"

namespace {

using namespace compactor::testing;

constexpr std::string_view separator = "\n==compactor-layer==\n"; // as in flattener_fuzzer.cpp

struct seed {
  std::string name;
  std::vector<std::vector<tar_item>> layers;
};

std::vector<seed> seeds() {
  const std::vector<tar_item> base = {dir("etc/"),       file("etc/passwd", "root:x:0:0\n"),
                                      dir("bin/"),       file("bin/sh", "#!", 0755),
                                      hardlink("bin/ash", "bin/sh"), soft_link("lib", "usr/lib"),
                                      dir("usr/"),       dir("usr/lib/"),
                                      file("usr/lib/libc.so", "elf")};
  return {
      {"one-file", {{file("hello", "hello\n")}}},
      {"tree", {base}},
      {"whiteout",
       {base, {whiteout("etc/.wh.passwd"), file("etc/hostname", "vm\n")}}},
      {"opaque",
       {base, {dir("usr/"), whiteout("usr/.wh..wh..opq"), file("usr/new", "new")}}},
      {"link-across-layers", {base, {hardlink("bin/sh2", "bin/sh")}}},
      {"link-to-removed", {{file("t", "t")}, {whiteout(".wh.t")}, {hardlink("l", "t")}}},
      {"type-changes",
       {{file("f", "file"), dir("d/"), file("d/x", "x"), soft_link("s", "d")},
        {dir("f/"), file("f/in", "in"), file("d", "now a file"), file("s/y", "through")}}},
      {"symlinked-parent",
       {{dir("real/"), soft_link("evil", "/etc"), soft_link("up", "../..")},
        {file("evil/passwd", "x"), file("up/x", "y")}}},
      {"names", {{file("/abs/x", "a"), file("./a//b/../c", "c"), dir("late/"),
                  file("late/child", "l"), whiteout(".wh.."), whiteout(".wh...")}}},
      {"special",
       {{tar_item{.name = "fifo", .mode = S_IFIFO | 0600},
         tar_item{.name = "null", .mode = S_IFCHR | 0666, .rdev_major = 1, .rdev_minor = 3},
         hardlink("fifo2", "fifo")}}},
      {"four-layers",
       {{file("a", "1")}, {file("a", "2"), file("b", "b")}, {whiteout(".wh.b")},
        {file("c", "c")}}},
  };
}

} // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: flattener_seeds DIRECTORY\n");
    return 2;
  }
  const std::filesystem::path directory = argv[1];
  std::filesystem::remove_all(directory);
  std::filesystem::create_directories(directory);

  const std::vector<std::pair<const char*, layer_compression>> compressions = {
      {"none", layer_compression::none},
      {"gzip", layer_compression::gzip},
      {"zstd", layer_compression::zstd}};
  for (const auto& item : seeds()) {
    for (const auto& [suffix, compression] : compressions) {
      std::ofstream out(directory / (item.name + "-" + suffix), std::ios::binary);
      for (std::size_t i = 0; i < item.layers.size(); ++i) {
        if (i > 0) {
          out << separator;
        }
        const auto blob = make_tar(item.layers[i], compression);
        out.write(reinterpret_cast<const char*>(blob.data()),
                  static_cast<std::streamsize>(blob.size()));
      }
      if (!out) {
        std::fprintf(stderr, "flattener_seeds: writing %s failed\n", item.name.c_str());
        return 1;
      }
    }
  }
  return 0;
}
