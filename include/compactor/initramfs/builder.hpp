// Image to initramfs: the image's layers and the host layer (init, launch configuration,
// transferred files) flattened in one pass into a compressed cpio, written atomically.
//
//   auto image = compactor::image::resolve("alpine:3.19");
//   compactor::initramfs::build_options options;
//   options.init_binary = ...;  // the guest init (kernel/init), e.g. embedded in the program
//   auto result = compactor::initramfs::build(image, options, "alpine.cpio.zst");
#pragma once

#include <filesystem>
#include <span>
#include <vector>

#include <compactor/archive/compression.hpp>
#include <compactor/archive/format.hpp>
#include <compactor/archive/output.hpp>
#include <compactor/archive/writer.hpp>
#include <compactor/flatten/flattener.hpp>
#include <compactor/image/source.hpp>
#include <compactor/initramfs/host_layer.hpp>
#include <compactor/initramfs/launch.hpp>

namespace compactor::initramfs {

enum class output_format { cpio, tar };

struct build_options {
  archive::compression_options compression{.method = archive::compression::zstd};
  output_format format = output_format::cpio;
  overrides launch;
  std::vector<transfer> transfers;
  std::span<const std::byte> init_binary;
};

struct build_result {
  guest::launch_config launch;
  flatten::statistics statistics;
};

template <typename Format>
build_result build_as(const image::resolved_image& image, const build_options& options,
                      const std::filesystem::path& output) {
  build_result result;
  result.launch = make_launch_config(image.config, options.launch);
  const host_layer extra(options.init_binary, result.launch, options.transfers);

  std::vector<image::layer> layers = image.layers;
  layers.push_back(extra.as_layer());

  archive::atomic_output file(output);
  archive::writer<Format> writer(file.fd(), {.compression = options.compression});
  result.statistics = flatten::flatten(layers, writer);
  writer.finish();
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
