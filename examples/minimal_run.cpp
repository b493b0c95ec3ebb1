// The smallest Docker-to-VM program on the library: resolve an image, turn it into an
// initramfs with the guest init, boot it with QEMU microvm, exit with the workload's status.
//
//   minimal-run IMAGE KERNEL
//
// (`compactor run` adds the cache, our own VMM, the options and the error handling.)
#include <cstdio>
#include <exception>
#include <filesystem>

#include <compactor/guest/kernel_parameters.hpp>
#include <compactor/hypervisors/qemu.hpp>
#include <compactor/image/resolve.hpp>
#include <compactor/initramfs/builder.hpp>

#include "cli/embedded_guest.hpp"

int main(int argc, char** argv) try {
  if (argc != 3) {
    std::fprintf(stderr, "usage: minimal-run IMAGE KERNEL\n");
    return 125;
  }
  const auto image = compactor::image::resolve(argv[1]);

  compactor::initramfs::build_options options;
  options.init_binary = compactor::commands::embedded_init();
  const auto initrd = std::filesystem::temp_directory_path() / "minimal-run.cpio.zst";
  compactor::initramfs::build(image, options, initrd);

  compactor::hypervisors::guest_spec guest;
  guest.kernel = argv[2];
  guest.initrd = initrd;
  guest.guest_parameters = compactor::guest::init_kernel_arguments();
  const auto result = compactor::hypervisors::qemu_runner().run(guest);
  std::filesystem::remove(initrd);
  return result.status.value_or(125);
} catch (const std::exception& failure) {
  std::fprintf(stderr, "minimal-run: %s\n", failure.what());
  return 125;
}
