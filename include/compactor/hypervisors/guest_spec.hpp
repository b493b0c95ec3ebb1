// What to boot and how, independent of the hypervisor that boots it.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <vector>

namespace compactor::hypervisors {

struct disk {
  std::filesystem::path path;
  bool read_only = false;
};

struct guest_spec {
  std::filesystem::path kernel; // ELF vmlinux or bzImage
  std::filesystem::path initrd;
  std::string guest_parameters; // kernel command-line entries for the guest (rdinit=, ...)
  unsigned memory_mib = 512;
  unsigned vcpus = 1;
  std::vector<disk> disks;
  std::optional<std::string> tap; // an existing or creatable tap interface
  bool net_offloads = true;       // checksum and segmentation offloads on virtio-net
  bool interactive = false;       // the host's stdin goes to the guest console
};

} // namespace compactor::hypervisors
