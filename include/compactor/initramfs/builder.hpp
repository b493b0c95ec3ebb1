// Image to initramfs: the image's layers and the host layer (init, launch configuration,
// transferred files) flattened in one pass into a compressed cpio, written atomically.
//
//   auto image = compactor::image::resolve("alpine:3.19");
//   compactor::initramfs::build_options options;
//   options.init_binary = ...;  // the guest init (kernel/init), e.g. embedded in the program
//   auto result = compactor::initramfs::build(image, options, "alpine.cpio.zst");
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>

#include <algorithm>
#include <filesystem>
#include <optional>
#include <string>
#include <span>
#include <vector>

#include <compactor/archive/compression.hpp>
#include <compactor/archive/format.hpp>
#include <compactor/archive/output.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>
#include <compactor/image/source.hpp>
#include <compactor/initramfs/guest_memory.hpp>
#include <compactor/initramfs/host_layer.hpp>
#include <compactor/initramfs/launch.hpp>

namespace compactor::initramfs {

enum class output_format { cpio, tar };

struct build_options {
  archive::compression_options compression{.method = archive::compression::zstd};
  output_format format = output_format::cpio;
  overrides launch;
  std::vector<transfer> transfers;
  std::vector<std::string> dns; // name servers for /etc/resolv.conf; empty: the image's
  std::span<const std::byte> init_binary;
  bool rootfs_only = false; // just the image's file system: no init, configuration or files
  // The spool directory and the limits a hostile image meets (uncompressed bytes, entries).
  flatten::options flatten;
};

// /etc/resolv.conf for `servers`. A loopback address is refused: in the guest it would name
// the guest itself, where no resolver runs.
inline std::string resolv_conf(const std::vector<std::string>& servers) {
  std::string text;
  for (const auto& server : servers) {
    in6_addr v6{};
    in_addr v4{};
    const bool is_v4 = ::inet_pton(AF_INET, server.c_str(), &v4) == 1;
    const bool is_v6 = !is_v4 && ::inet_pton(AF_INET6, server.c_str(), &v6) == 1;
    if (!is_v4 && !is_v6) {
      throw compactor::error(fmt::format("--dns {}: not an IP address", server));
    }
    if ((is_v4 && (ntohl(v4.s_addr) >> 24) == 127) || (is_v6 && IN6_IS_ADDR_LOOPBACK(&v6))) {
      throw compactor::error(fmt::format(
          "--dns {}: a loopback resolver would be the guest itself; give a reachable one",
          server));
    }
    text += "nameserver " + server + "\n";
  }
  return text;
}

struct build_result {
  guest::launch_config launch;
  flatten::statistics statistics;
  archive_size size; // of the archive written, before and after compression
};

template <typename Format>
build_result build_as(const image::resolved_image& image, const build_options& options,
                      const std::filesystem::path& output) {
  build_result result;
  result.launch = make_launch_config(image.config, options.launch);
  std::vector<image::layer> layers = image.layers;
  std::optional<host_layer> extra;
  if (!options.rootfs_only) {
    extra.emplace(options.init_binary, result.launch, options.transfers,
                  resolv_conf(options.dns));
    layers.push_back(extra->as_layer());
  }

  archive::atomic_output file(output);
  archive::writer<Format> writer(file.fd(), {.compression = options.compression});
  result.statistics = flatten::flatten(layers, writer, options.flatten);
  writer.finish();
  // A placeholder directory and its own entry are one inode, and so is a file written again
  // with its links: counting none of the placeholders keeps `inodes` a lower bound.
  const auto& stats = result.statistics;
  const auto inodes = writer.inodes_written();
  const auto rewritten = stats.placeholders + stats.relinked_files;
  result.size = {.uncompressed = writer.uncompressed_bytes(),
                 .compressed = writer.bytes_written(),
                 .entries = writer.entries(),
                 .inodes = inodes - std::min(inodes, rewritten),
                 .page_bytes = writer.page_bytes() -
                               std::min(writer.page_bytes(), stats.relinked_page_bytes)};
  // Every layer was read to its end, so every digest was checked: the output can be trusted.
  file.commit();
  return result;
}

inline build_result build(const image::resolved_image& image, const build_options& options,
                          const std::filesystem::path& output) {
  return options.format == output_format::cpio
             ? build_as<archive::cpio_newc>(image, options, output)
             : build_as<archive::tar_pax>(image, options, output);
}

} // namespace compactor::initramfs
