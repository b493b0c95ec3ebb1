// A machine with a device set of one's own, composed at compile time: the console, the exit
// port, and two virtio-blk disks (the second read-only). The machine derives the MMIO windows,
// interrupt lines and kernel command-line entries from this list; nothing else changes.
//
//   custom-machine KERNEL INITRD DISK READ_ONLY_DISK [KERNEL_ARGUMENTS]
//
// Needs a host where KVM can boot Linux (see `compactor host-check`).
#include <cstdio>
#include <exception>
#include <string>

#include <compactor/backends/raw_file.hpp>
#include <compactor/devices/exit_device.hpp>
#include <compactor/devices/serial_output.hpp>
#include <compactor/devices/uart_16550.hpp>
#include <compactor/virtio/block.hpp>
#include <compactor/virtio/mmio_device.hpp>
#include <compactor/vmm/machine.hpp>

namespace {

using console = compactor::devices::uart_16550<compactor::devices::fd_output>;
template <unsigned Slot>
using disk = compactor::virtio::mmio_device<
    compactor::virtio::block_device<compactor::backends::raw_file>, Slot>;
using two_disk_machine =
    compactor::vmm::machine<console, compactor::devices::exit_device, disk<0>, disk<1>>;

} // namespace

int main(int argc, char** argv) try {
  if (argc < 5) {
    std::fprintf(stderr, "usage: custom-machine KERNEL INITRD DISK READ_ONLY_DISK [ARGS]\n");
    return 125;
  }
  compactor::vmm::machine_config config;
  config.memory_size = 256 * compactor::vmm::layout::mib;
  two_disk_machine machine(config, console(compactor::devices::fd_output::to_stdout()),
                           compactor::devices::exit_device{},
                           disk<0>(compactor::backends::raw_file(argv[3], false)),
                           disk<1>(compactor::backends::raw_file(argv[4], true)));
  machine.load_linux(argv[1], argv[2], argc > 5 ? argv[5] : "rdinit=/.compactor/init");
  const auto report = machine.run();
  std::fprintf(stderr, "custom-machine: %s\n", report.summary().c_str());
  return report.process_exit_status();
} catch (const std::exception& failure) {
  std::fprintf(stderr, "custom-machine: %s\n", failure.what());
  return 125;
}
