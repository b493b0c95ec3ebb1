// `compactor export IMAGE -o FILE`: the image as the initramfs a guest boots (the guest init,
// its launch configuration and any transferred files included), or as a tar to look at.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <compactor/archive/compression.hpp>
#include <compactor/image/resolve.hpp>
#include <compactor/initramfs/builder.hpp>

#include "embedded_guest.hpp"
#include "image_options.hpp"
#include "launch_options.hpp"

namespace compactor::commands {

struct export_command {
  CLI::App* app = nullptr;
  std::string reference;
  std::vector<std::string> command;
  std::string output;
  std::string compression = "zstd";
  std::string format = "cpio";
  std::vector<std::string> dns;
  bool rootfs_only = false;
  image_options source;
  launch_options launch;
  bool verbose = false;

  [[nodiscard]] bool parsed() const { return app->parsed(); }

  int run() const {
    const auto started = std::chrono::steady_clock::now();
    initramfs::build_options options;
    const auto method = archive::compression_from_string(compression);
    if (!method) {
      throw compactor::error(fmt::format("--compression {}: expected none, gzip, zstd, lz4 or xz",
                                         compression));
    }
    options.compression.method = *method;
    options.format = format == "tar" ? initramfs::output_format::tar
                                     : initramfs::output_format::cpio;
    options.launch = launch.overrides(command);
    options.transfers = launch.transfer_list();
    options.dns = dns;
    options.rootfs_only = rootfs_only;
    options.init_binary = embedded_init();
    static_cast<void>(initramfs::resolv_conf(dns)); // refuse a bad --dns before any download

    const auto image = image::resolve(reference, source.resolve_options());
    const auto resolved = std::chrono::steady_clock::now();
    const auto result = initramfs::build(image, options, output);
    const auto done = std::chrono::steady_clock::now();

    if (verbose) {
      const auto ms = [](auto duration) {
        return std::chrono::duration_cast<std::chrono::milliseconds>(duration).count();
      };
      fmt::print(stderr, "resolved {} in {} ms; wrote {} ({} entries) in {} ms\n",
                 image.name.empty() ? image.source : image.name, ms(resolved - started), output,
                 result.statistics.entries_written, ms(done - resolved));
    }
    return 0;
  }
};

inline void add_export(CLI::App& app, export_command& command) {
  command.app = app.add_subcommand(
      "export", "Write an image as a compressed cpio initramfs (or a tar) in one pass");
  command.app->add_option("image", command.reference, "The image (see `compactor inspect`)")
      ->required();
  command.app->add_option("command", command.command, "Replaces the image's CMD");
  command.app->add_option("-o,--output", command.output, "The file to write")->required();
  command.app->add_option("--compression", command.compression, "none, gzip, zstd, lz4 or xz")
      ->capture_default_str();
  command.app->add_option("--format", command.format, "cpio (an initramfs) or tar")
      ->check(CLI::IsMember({"cpio", "tar"}))
      ->capture_default_str();
  command.app->add_option("--dns", command.dns, "Name servers written to /etc/resolv.conf")
      ->delimiter(',')
      ->allow_extra_args(false);
  command.app->add_flag("--rootfs-only", command.rootfs_only,
                        "Only the image's file system: no init, configuration or added files");
  command.source.add_to(*command.app);
  command.launch.add_to(*command.app);
  command.app->add_flag("-v,--verbose", command.verbose, "Say what was done and how long it took");
}

} // namespace compactor::commands
