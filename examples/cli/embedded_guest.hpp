// The guest init and kernel that the build embeds in this program (examples/guest/), and the
// demo image it makes.
#pragma once

#include <unistd.h>

#include <cstddef>
#include <filesystem>
#include <fstream>
#include <span>
#include <string>

#include <fmt/format.h>

#include <compactor/image/blob_cache.hpp>
#include <compactor/image/digest.hpp>
#include <compactor/support/error.hpp>

extern "C" {
extern const std::byte compactor_embedded_init[];
extern const std::byte compactor_embedded_init_end[];
extern const std::byte compactor_embedded_kernel[];
extern const std::byte compactor_embedded_kernel_end[];
}

namespace compactor::commands {

inline std::span<const std::byte> embedded_init() {
  return {compactor_embedded_init, compactor_embedded_init_end};
}

inline std::span<const std::byte> embedded_kernel() {
  return {compactor_embedded_kernel, compactor_embedded_kernel_end};
}

// The embedded kernel as a file (QEMU and the VMM both load a path), written once per kernel
// into the cache and named by its digest.
inline std::filesystem::path embedded_kernel_file() {
  const auto kernel = embedded_kernel();
  image::sha256 hash;
  hash.update(kernel);
  const auto digest = hash.finish().substr(std::string_view("sha256:").size());
  const auto directory = image::blob_cache::default_root() / "kernels";
  const auto path = directory / ("vmlinux-" + digest.substr(0, 16));
  if (std::filesystem::exists(path) && std::filesystem::file_size(path) == kernel.size()) {
    return path;
  }
  std::filesystem::create_directories(directory);
  const auto temporary = directory / fmt::format(".vmlinux-{}.tmp", ::getpid());
  {
    std::ofstream file(temporary, std::ios::binary);
    file.write(reinterpret_cast<const char*>(kernel.data()),
               static_cast<std::streamsize>(kernel.size()));
    if (!file) {
      std::filesystem::remove(temporary);
      throw compactor::error("cannot write the kernel to " + temporary.string());
    }
  }
  std::filesystem::rename(temporary, path);
  return path;
}

// The demo image beside the program (the build tree) or in the installed data directory.
inline std::string demo_image_reference() {
  const auto program = std::filesystem::read_symlink("/proc/self/exe");
  for (const auto& candidate :
       {program.parent_path() / "demo-image",
        program.parent_path().parent_path() / "share" / "compactor" / "demo-image"}) {
    if (std::filesystem::exists(candidate / "index.json")) {
      return "oci:" + candidate.string() + ":demo";
    }
  }
  throw compactor::error("no image named, and the demo image is not installed beside " +
                         program.string());
}

} // namespace compactor::commands
