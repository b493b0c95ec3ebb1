// Flattens the image of an OCI layout into a compressed cpio initramfs; the export benchmark
// (run.sh) times it against umoci + cpio + zstd and against plain decompression.
//
//   flatten_oci LAYOUT OUTPUT [none|gzip|zstd|lz4|xz] [zstd worker threads]
#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/archive/output.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>

namespace {

namespace fs = std::filesystem;

fs::path blob_path(const fs::path& layout, const std::string& digest) {
  const auto colon = digest.find(':');
  return layout / "blobs" / digest.substr(0, colon) / digest.substr(colon + 1);
}

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

compactor::image::layer file_layer(const fs::path& path, const nlohmann::json& descriptor) {
  compactor::image::layer layer;
  layer.digest = descriptor.at("digest").get<std::string>();
  layer.media_type = descriptor.at("mediaType").get<std::string>();
  layer.size = descriptor.at("size").get<std::uint64_t>();
  layer.open = [path]() -> compactor::image::byte_reader {
    auto fd = std::make_shared<compactor::unique_fd>(
        compactor::check_syscall(::open(path.c_str(), O_RDONLY | O_CLOEXEC), "open " + path.string()));
    return [fd](std::span<std::byte> buffer) -> std::size_t {
      return static_cast<std::size_t>(
          compactor::check_syscall(::read(fd->get(), buffer.data(), buffer.size()), "read"));
    };
  };
  return layer;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s LAYOUT OUTPUT [none|gzip|zstd|lz4|xz]\n", argv[0]);
    return 2;
  }
  try {
    const fs::path layout = argv[1];
    const auto method = compactor::archive::compression_from_string(argc > 3 ? argv[3] : "zstd");
    if (!method) {
      throw compactor::error("unknown compression");
    }
    const auto index = read_json(layout / "index.json");
    const auto manifest = read_json(
        blob_path(layout, index.at("manifests").at(0).at("digest").get<std::string>()));
    std::vector<compactor::image::layer> layers;
    for (const auto& descriptor : manifest.at("layers")) {
      layers.push_back(file_layer(
          blob_path(layout, descriptor.at("digest").get<std::string>()), descriptor));
    }

    const auto start = std::chrono::steady_clock::now();
    compactor::archive::atomic_output output(argv[2]);
    compactor::archive::writer<compactor::archive::cpio_newc> out(
        output.fd(),
        {.compression = {.method = *method,
                         .zstd_threads = argc > 4 ? static_cast<unsigned>(std::stoul(argv[4])) : 0}});
    const auto stats = compactor::flatten::flatten(layers, out);
    out.finish();
    output.commit();
    const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;

    fmt::print("flatten_oci: {} layers, {} entries read, {} written, {} hidden, {} placeholders, "
               "{} link sets, {:.1f} MB content, {:.1f} MB spooled, {:.1f} MB out, {:.2f} s\n",
               stats.layers, stats.entries_read, stats.entries_written, stats.hidden,
               stats.placeholders, stats.hard_link_sets, stats.content_bytes / 1e6,
               stats.spooled_bytes / 1e6, out.bytes_written() / 1e6, took.count());
    return 0;
  } catch (const std::exception& failure) {
    std::fprintf(stderr, "flatten_oci: %s\n", failure.what());
    return 1;
  }
}
