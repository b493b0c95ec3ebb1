// Whether an initramfs can be unpacked in a guest's memory, checked before the guest boots: a
// guest short of memory fails late and obscurely ("Initramfs unpacking failed: write error",
// or an init that finds no room for /proc).
//
// The kernel unpacks the initramfs into its root file system, a tmpfs unless the command line
// says `rootfstype=ramfs` (init/do_mounts.c, rootfs_init_fs_context()). A tmpfs mounted without
// options may hold half of the memory the kernel has free at that point in pages, and as many
// inodes as half that number of pages (mm/shmem.c, shmem_default_max_blocks() and
// shmem_default_max_inodes()). Free memory is the guest's less what the kernel reserved by
// then: its image, the compressed initramfs (freed only once unpacked), struct page for every
// page (64 bytes per 4 KiB) and its first per-CPU chunk (2 MiB per CPU unit).
//
// The estimate errs towards free memory, so that only a guest that cannot boot is refused.
// Measured with the bundled kernel under QEMU: a guest of 80 MiB reserved 18.9 MiB (estimate
// 17.7 MiB); an initramfs of 28 MiB of files failed at 72 MiB and booted at 80 (refused here at
// 72, accepted at 80); one of 12,000 empty files failed at 112 MiB and booted at 128.
#pragma once

#include <elf.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/archive/output.hpp>
#include <compactor/support/error.hpp>

namespace compactor::initramfs {

struct archive_size {
  std::uint64_t uncompressed = 0; // the cpio before compression
  std::uint64_t compressed = 0;   // the file as written
  std::uint64_t entries = 0;      // archive members
  std::uint64_t inodes = 0;       // members that are files of their own (not more link names)
  std::uint64_t page_bytes = 0;   // their content, each rounded up to 4 KiB pages
};

enum class root_filesystem { tmpfs, ramfs };

// The root file system a guest with kernel command line `parameters` unpacks into.
inline root_filesystem root_filesystem_for(std::string_view parameters) {
  return parameters.find("rootfstype=ramfs") != std::string_view::npos ? root_filesystem::ramfs
                                                                      : root_filesystem::tmpfs;
}

inline constexpr std::uint64_t page_size = 4096;
inline constexpr std::uint64_t mib = std::uint64_t{1} << 20;
// The one per-CPU chunk a single-vCPU guest has; page tables and the rest are not counted.
inline constexpr std::uint64_t other_reserved = 2 * mib;

// Memory the kernel holds before the root file system is mounted, at least.
inline std::uint64_t reserved_bytes(std::uint64_t memory, std::uint64_t kernel_bytes,
                                    std::uint64_t compressed) {
  return kernel_bytes + compressed + memory / 64 + other_reserved;
}

struct root_capacity {
  std::uint64_t bytes = 0;
  std::uint64_t inodes = 0;
};

inline root_capacity capacity_of(std::uint64_t memory, std::uint64_t kernel_bytes,
                                 std::uint64_t compressed, root_filesystem root) {
  const auto reserved = reserved_bytes(memory, kernel_bytes, compressed);
  const auto free = memory > reserved ? memory - reserved : 0;
  if (root == root_filesystem::ramfs) {
    return {.bytes = free, .inodes = UINT64_MAX};
  }
  return {.bytes = free / page_size / 2 * page_size, .inodes = free / page_size / 2};
}

inline bool fits(const archive_size& initramfs, std::uint64_t kernel_bytes,
                 std::uint64_t memory, root_filesystem root) {
  const auto room = capacity_of(memory, kernel_bytes, initramfs.compressed, root);
  return initramfs.page_bytes <= room.bytes && initramfs.inodes <= room.inodes;
}

// The least guest memory, in MiB, in which the initramfs may fit.
inline std::uint64_t memory_needed_mib(const archive_size& initramfs, std::uint64_t kernel_bytes,
                                       root_filesystem root) {
  std::uint64_t low = 1;
  std::uint64_t high = 1;
  while (!fits(initramfs, kernel_bytes, high * mib, root)) {
    high *= 2;
  }
  while (low < high) {
    const auto middle = low + (high - low) / 2;
    if (fits(initramfs, kernel_bytes, middle * mib, root)) {
      high = middle;
    } else {
      low = middle + 1;
    }
  }
  return high;
}

// Throws, before anything boots, when an initramfs of `initramfs` cannot be unpacked in a guest
// of `memory_mib` MiB whose kernel takes `kernel_bytes` (kernel_memory_bytes()).
inline void check_fits_in_guest(const archive_size& initramfs, std::uint64_t kernel_bytes,
                                std::uint64_t memory_mib,
                                root_filesystem root = root_filesystem::tmpfs) {
  if (fits(initramfs, kernel_bytes, memory_mib * mib, root)) {
    return;
  }
  const auto room = capacity_of(memory_mib * mib, kernel_bytes, initramfs.compressed, root);
  const auto described =
      root == root_filesystem::tmpfs
          ? fmt::format("{} MiB and {} files", room.bytes / mib, room.inodes)
          : fmt::format("{} MiB", room.bytes / mib);
  throw error(fmt::format(
      "the initramfs unpacks to {} MiB in {} files; with --mem-size-mb {} the guest's root "
      "file system ({}) holds at most {}: give --mem-size-mb {} or more",
      (initramfs.page_bytes + mib - 1) / mib, initramfs.inodes, memory_mib,
      root == root_filesystem::tmpfs ? "tmpfs, half of what the kernel leaves free" : "ramfs",
      described, memory_needed_mib(initramfs, kernel_bytes, root)));
}

// The memory a kernel image occupies once loaded: an ELF vmlinux's loadable segments, a
// bzImage's init_size (Documentation/x86/boot.rst, protocol 2.10), or else the file's size.
inline std::uint64_t kernel_memory_bytes(const std::filesystem::path& path) {
  const auto file_size = std::filesystem::file_size(path);
  std::ifstream file(path, std::ios::binary);
  Elf64_Ehdr ehdr{};
  file.read(reinterpret_cast<char*>(&ehdr), sizeof ehdr);
  if (file && std::memcmp(ehdr.e_ident, ELFMAG, SELFMAG) == 0 &&
      ehdr.e_ident[EI_CLASS] == ELFCLASS64 && ehdr.e_phentsize == sizeof(Elf64_Phdr)) {
    std::uint64_t total = 0;
    for (unsigned i = 0; i < ehdr.e_phnum; ++i) {
      Elf64_Phdr phdr{};
      file.seekg(static_cast<std::streamoff>(ehdr.e_phoff + i * sizeof phdr));
      file.read(reinterpret_cast<char*>(&phdr), sizeof phdr);
      if (!file) {
        return file_size;
      }
      if (phdr.p_type == PT_LOAD) {
        total += phdr.p_memsz;
      }
    }
    return total;
  }

  file.clear();
  unsigned char header[0x264] = {};
  file.seekg(0);
  file.read(reinterpret_cast<char*>(header), sizeof header);
  const auto little_endian = [&](std::size_t at, std::size_t width) {
    std::uint64_t value = 0;
    for (std::size_t i = 0; i < width; ++i) {
      value |= std::uint64_t{header[at + i]} << (8 * i);
    }
    return value;
  };
  if (file && std::memcmp(header + 0x202, "HdrS", 4) == 0 && little_endian(0x206, 2) >= 0x020a) {
    const auto init_size = little_endian(0x260, 4);
    return init_size != 0 ? init_size : file_size;
  }
  return file_size;
}

// The sizes of a cached initramfs are kept beside it in `INITRAMFS.size.json`, written after
// the initramfs itself; an initramfs without it is not trusted as a cache entry.
inline std::filesystem::path size_record_path(const std::filesystem::path& initramfs) {
  return initramfs.string() + ".size.json";
}

inline void write_size_record(const std::filesystem::path& initramfs, const archive_size& size) {
  const nlohmann::json record = {{"uncompressed", size.uncompressed},
                                 {"compressed", size.compressed},
                                 {"entries", size.entries},
                                 {"inodes", size.inodes},
                                 {"page_bytes", size.page_bytes}};
  archive::atomic_output file(size_record_path(initramfs));
  const auto text = record.dump() + "\n";
  std::size_t done = 0;
  while (done < text.size()) {
    const auto wrote = ::write(file.fd(), text.data() + done, text.size() - done);
    if (wrote < 0 && errno == EINTR) {
      continue;
    }
    check_syscall(wrote, "write " + size_record_path(initramfs).string());
    done += static_cast<std::size_t>(wrote);
  }
  file.commit();
}

// The recorded sizes, or nothing when the record is missing, malformed, or belongs to a file
// of another size.
inline std::optional<archive_size> read_size_record(const std::filesystem::path& initramfs) {
  std::ifstream file(size_record_path(initramfs));
  if (!file) {
    return std::nullopt;
  }
  const auto record = nlohmann::json::parse(file, nullptr, false);
  const auto number = [&](const char* key) -> std::optional<std::uint64_t> {
    if (!record.is_object() || !record.contains(key) || !record[key].is_number_unsigned()) {
      return std::nullopt;
    }
    return record[key].get<std::uint64_t>();
  };
  const auto uncompressed = number("uncompressed");
  const auto compressed = number("compressed");
  const auto entries = number("entries");
  const auto inodes = number("inodes");
  const auto page_bytes = number("page_bytes");
  if (!uncompressed || !compressed || !entries || !inodes || !page_bytes) {
    return std::nullopt;
  }
  const archive_size size{.uncompressed = *uncompressed,
                          .compressed = *compressed,
                          .entries = *entries,
                          .inodes = *inodes,
                          .page_bytes = *page_bytes};
  std::error_code failed;
  const auto actual = std::filesystem::file_size(initramfs, failed);
  if (failed || actual != size.compressed) {
    return std::nullopt;
  }
  return size;
}

// What an initramfs file proves about its size without being unpacked, for one that this
// program did not build (`compactor boot`): an uncompressed cpio is its own size, and a zstd
// frame may carry its content size (RFC 8878, 3.1.1.1.1-2, Frame_Header_Descriptor and
// Frame_Content_Size; only the first frame is read, so it is a lower bound). Nothing else is
// trusted: gzip's ISIZE is the size modulo 4 GiB of one member only. Where nothing is proven
// the uncompressed size is 0. Files and pages stay unknown (0), so check_fits_in_guest() with
// this size refuses only a guest that the kernel and the compressed file fill already.
inline archive_size size_from_file(const std::filesystem::path& path) {
  archive_size size;
  size.compressed = std::filesystem::file_size(path);
  std::ifstream file(path, std::ios::binary);
  unsigned char header[18] = {};
  file.read(reinterpret_cast<char*>(header), sizeof header);
  const auto got = static_cast<std::size_t>(file.gcount());

  if (got >= 6 && std::string_view(reinterpret_cast<const char*>(header), 6) == "070701") {
    size.uncompressed = size.compressed;
    return size;
  }
  constexpr unsigned char zstd_magic[] = {0x28, 0xb5, 0x2f, 0xfd};
  if (got < 5 || !std::equal(std::begin(zstd_magic), std::end(zstd_magic), header)) {
    return size;
  }
  const unsigned descriptor = header[4];
  const bool single_segment = (descriptor & 0x20) != 0;
  const unsigned fcs_flag = descriptor >> 6;
  if (fcs_flag == 0 && !single_segment) {
    return size; // the frame does not say
  }
  constexpr std::size_t dictionary_id_bytes[] = {0, 1, 2, 4};
  constexpr std::size_t content_size_bytes[] = {1, 2, 4, 8};
  const std::size_t at = 5 + (single_segment ? 0 : 1) + dictionary_id_bytes[descriptor & 3];
  const std::size_t width = content_size_bytes[fcs_flag];
  if (at + width > got) {
    return size;
  }
  std::uint64_t content = 0;
  for (std::size_t i = 0; i < width; ++i) {
    content |= std::uint64_t{header[at + i]} << (8 * i);
  }
  size.uncompressed = width == 2 ? content + 256 : content;
  return size;
}

} // namespace compactor::initramfs
