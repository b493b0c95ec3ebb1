// Loading a Linux kernel, its initrd and command line into guest memory for the 64-bit boot
// protocol (Documentation/x86/boot.rst, "64-bit Boot Protocol"; the zero page is
// Documentation/x86/zero-page.rst).
//
// Two kernel formats: an ELF vmlinux (its PT_LOAD segments at their physical addresses, entry
// at e_entry) and a bzImage (the protected-mode part at 1 MiB, entry 0x200 beyond it). An ELF
// kernel that carries the Xen note XEN_ELFNOTE_PHYS32_ENTRY can instead be entered through PVH
// (Xen's docs/misc/pvh.pandoc): 32-bit protected mode, %ebx pointing at an hvm_start_info.
#pragma once

#include <asm/bootparam.h>
#include <elf.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>
#include <compactor/vmm/guest_memory.hpp>
#include <compactor/vmm/x86/layout.hpp>

namespace compactor::vmm::x86 {

enum class kernel_format { elf, bzimage };

// How the vCPU enters the kernel. `automatic` takes PVH when the kernel offers it.
enum class boot_entry { automatic, linux_64, pvh };

// Where the kernel went and what the loader learned from it.
struct loaded_kernel {
  kernel_format format = kernel_format::elf;
  std::uint64_t entry = 0;         // the 64-bit entry point
  std::uint64_t end = 0;           // first guest address the kernel will not touch
  std::uint32_t cmdline_size = 0;  // the longest command line, without its NUL
  std::uint32_t initrd_addr_max = 0;
  std::optional<setup_header> header; // a bzImage's setup header
  std::optional<std::uint32_t> pvh_entry; // from an ELF kernel's Xen PHYS32_ENTRY note
};

// A malformed kernel image: the message says which check failed.
class kernel_image_error : public error {
public:
  using error::error;
};

namespace detail {

inline constexpr std::uint16_t boot_flag_magic = 0xaa55;
inline constexpr std::uint32_t header_magic = 0x53726448; // "HdrS"
inline constexpr std::uint8_t loader_type_undefined = 0xff;
inline constexpr std::uint32_t default_kernel_alignment = 0x1000000;
// Linux's COMMAND_LINE_SIZE on x86; an ELF vmlinux carries no header to ask.
inline constexpr std::uint32_t elf_cmdline_size = 2047;
inline constexpr std::uint32_t setup_header_offset = 0x1f1;
inline constexpr std::uint32_t e820_ram = 1;
inline constexpr std::uint32_t e820_reserved = 2;
inline constexpr std::uint32_t xen_elfnote_phys32_entry = 18;

// `offset + size <= total` without wrapping.
[[nodiscard]] constexpr bool within(std::uint64_t offset, std::uint64_t size,
                                    std::uint64_t total) noexcept {
  return offset <= total && size <= total - offset;
}

template <typename T>
[[nodiscard]] T read_image(std::span<const std::uint8_t> image, std::uint64_t offset,
                           std::string_view what) {
  if (!within(offset, sizeof(T), image.size())) {
    throw kernel_image_error(
        fmt::format("kernel image is too short for its {} at offset {:#x}", what, offset));
  }
  T value;
  std::memcpy(&value, image.data() + offset, sizeof(T));
  return value;
}

inline void copy_to_guest(const guest_memory& memory, std::uint64_t address,
                          std::span<const std::uint8_t> bytes, std::uint64_t memory_size,
                          std::string_view what) {
  auto target = memory.try_span(address, memory_size);
  if (!target) {
    throw kernel_image_error(fmt::format("{} [{:#x}, +{:#x}) does not fit in guest RAM", what,
                                         address, memory_size));
  }
  std::copy(bytes.begin(), bytes.end(), target->begin());
  std::fill(target->begin() + static_cast<std::ptrdiff_t>(bytes.size()), target->end(), 0);
}

} // namespace detail

[[nodiscard]] inline bool is_elf(std::span<const std::uint8_t> image) noexcept {
  return image.size() >= SELFMAG && std::memcmp(image.data(), ELFMAG, SELFMAG) == 0;
}

namespace detail {

// The PVH entry from the notes in [offset, offset + size) of an ELF file, if one is there.
inline std::optional<std::uint32_t> find_pvh_entry(std::span<const std::uint8_t> image,
                                                   std::uint64_t offset, std::uint64_t size) {
  const auto align4 = [](std::uint64_t n) { return (n + 3) & ~std::uint64_t{3}; };
  const std::uint64_t end = offset + size;
  while (offset + sizeof(Elf64_Nhdr) <= end) {
    const auto note = read_image<Elf64_Nhdr>(image, offset, "ELF note");
    const std::uint64_t name = offset + sizeof(Elf64_Nhdr);
    const std::uint64_t descriptor = name + align4(note.n_namesz);
    const std::uint64_t next = descriptor + align4(note.n_descsz);
    if (next > end || next <= offset) {
      throw kernel_image_error("kernel ELF note runs past its segment");
    }
    if (note.n_type == xen_elfnote_phys32_entry && note.n_namesz == 4 &&
        note.n_descsz >= 4 && std::memcmp(image.data() + name, "Xen", 4) == 0) {
      return read_image<std::uint32_t>(image, descriptor, "PVH entry");
    }
    offset = next;
  }
  return std::nullopt;
}

} // namespace detail

[[nodiscard]] inline loaded_kernel load_elf_kernel(const guest_memory& memory,
                                                   std::span<const std::uint8_t> image) {
  using namespace detail;
  const auto ehdr = read_image<Elf64_Ehdr>(image, 0, "ELF header");
  if (!is_elf(image) || ehdr.e_ident[EI_CLASS] != ELFCLASS64 ||
      ehdr.e_ident[EI_DATA] != ELFDATA2LSB || ehdr.e_machine != EM_X86_64) {
    throw kernel_image_error("kernel is not a little-endian 64-bit x86 ELF file");
  }
  if (ehdr.e_phentsize != sizeof(Elf64_Phdr) ||
      !within(ehdr.e_phoff, std::uint64_t{ehdr.e_phnum} * sizeof(Elf64_Phdr), image.size())) {
    throw kernel_image_error("kernel ELF program headers lie outside the file");
  }

  loaded_kernel result;
  result.format = kernel_format::elf;
  result.cmdline_size = elf_cmdline_size;
  result.initrd_addr_max = 0xffffffff;
  std::optional<std::uint64_t> entry;
  bool loaded_any = false;
  for (unsigned i = 0; i < ehdr.e_phnum; ++i) {
    const auto phdr = read_image<Elf64_Phdr>(image, ehdr.e_phoff + i * sizeof(Elf64_Phdr),
                                             "program header");
    if (phdr.p_type == PT_NOTE && !result.pvh_entry) {
      if (!within(phdr.p_offset, phdr.p_filesz, image.size())) {
        throw kernel_image_error(fmt::format("kernel ELF note segment {} lies outside the file",
                                             i));
      }
      result.pvh_entry = find_pvh_entry(image, phdr.p_offset, phdr.p_filesz);
    }
    if (phdr.p_type != PT_LOAD) {
      continue;
    }
    if (!within(phdr.p_offset, phdr.p_filesz, image.size()) || phdr.p_filesz > phdr.p_memsz) {
      throw kernel_image_error(fmt::format("kernel ELF segment {} lies outside the file", i));
    }
    copy_to_guest(memory, phdr.p_paddr, image.subspan(phdr.p_offset, phdr.p_filesz),
                  phdr.p_memsz, fmt::format("kernel ELF segment {}", i));
    loaded_any = true;
    result.end = std::max(result.end, phdr.p_paddr + phdr.p_memsz);

    // vmlinux names its entry by physical address; other ELF files may use the virtual one.
    if (ehdr.e_entry >= phdr.p_paddr && ehdr.e_entry - phdr.p_paddr < phdr.p_memsz) {
      entry = ehdr.e_entry;
    } else if (!entry && ehdr.e_entry >= phdr.p_vaddr &&
               ehdr.e_entry - phdr.p_vaddr < phdr.p_memsz) {
      entry = ehdr.e_entry - phdr.p_vaddr + phdr.p_paddr;
    }
  }
  if (!loaded_any) {
    throw kernel_image_error("kernel ELF file has no loadable segment");
  }
  if (!entry) {
    throw kernel_image_error(
        fmt::format("kernel ELF entry {:#x} lies in no loaded segment", ehdr.e_entry));
  }
  result.entry = *entry;
  return result;
}

[[nodiscard]] inline loaded_kernel load_bzimage(const guest_memory& memory,
                                                std::span<const std::uint8_t> image) {
  using namespace detail;
  auto header = read_image<setup_header>(image, setup_header_offset, "setup header");
  if (header.boot_flag != boot_flag_magic || header.header != header_magic) {
    throw kernel_image_error("kernel is neither an ELF file nor a bzImage (no HdrS header)");
  }
  // xloadflags (and so the 64-bit entry) arrived with protocol 2.12.
  if (header.version < 0x020c || (header.xloadflags & XLF_KERNEL_64) == 0) {
    throw kernel_image_error(fmt::format(
        "bzImage (boot protocol {}.{:02}) has no 64-bit entry point", header.version >> 8,
        header.version & 0xff));
  }

  const std::uint64_t setup_sectors = header.setup_sects == 0 ? 4 : header.setup_sects;
  const std::uint64_t kernel_offset = (setup_sectors + 1) * 512;
  if (kernel_offset >= image.size()) {
    throw kernel_image_error("bzImage ends inside its real-mode setup code");
  }
  const auto kernel = image.subspan(kernel_offset);
  // The kernel decompresses itself in place and needs init_size bytes from its load address.
  const std::uint64_t footprint = std::max<std::uint64_t>(kernel.size(), header.init_size);
  copy_to_guest(memory, kernel_load_address, kernel, footprint, "bzImage kernel");

  // Only the part of the header this kernel defines is kept (boot.rst: it ends at 0x202 plus
  // the byte at 0x201); the rest of our copy stays zero.
  const std::uint64_t header_end = 0x202 + read_image<std::uint8_t>(image, 0x201, "jump");
  const std::uint64_t defined = std::min<std::uint64_t>(header_end - setup_header_offset,
                                                        sizeof(setup_header));
  setup_header trimmed{};
  std::memcpy(&trimmed, &header, defined);

  loaded_kernel result;
  result.format = kernel_format::bzimage;
  result.entry = kernel_load_address + 0x200;
  result.end = kernel_load_address + footprint;
  result.cmdline_size = header.cmdline_size == 0 ? 255 : header.cmdline_size;
  result.initrd_addr_max = header.initrd_addr_max;
  result.header = trimmed;
  return result;
}

// Loads either format, told apart by the ELF magic.
[[nodiscard]] inline loaded_kernel load_kernel(const guest_memory& memory,
                                               std::span<const std::uint8_t> image) {
  return is_elf(image) ? load_elf_kernel(memory, image) : load_bzimage(memory, image);
}

// The e820 map a guest with `memory` sees: base memory below the MP table, then RAM from
// 1 MiB to the MMIO hole, then RAM above 4 GiB.
[[nodiscard]] inline std::vector<boot_e820_entry> e820_map(const guest_memory& memory) {
  using namespace detail;
  std::vector<boot_e820_entry> map;
  map.push_back({0, mptable_address, e820_ram});
  map.push_back({mptable_address, kernel_load_address - mptable_address, e820_reserved});
  for (const auto& region : memory.regions()) {
    const std::uint64_t start = std::max(region.guest_address(), kernel_load_address);
    if (region.guest_end() > start) {
      map.push_back({start, region.guest_end() - start, e820_ram});
    }
  }
  return map;
}

// Where the boot put the pieces; `entry` and `zero_page` are what the vCPU needs.
struct linux_boot_layout {
  boot_entry protocol = boot_entry::linux_64; // linux_64 or pvh, never automatic
  std::uint64_t entry = 0;
  std::uint64_t zero_page = zero_page_address; // or the hvm_start_info, for PVH
  std::uint64_t initrd_address = 0;
  std::uint64_t initrd_size = 0;
  loaded_kernel kernel;
};

namespace detail {

// Xen's public/arch-x86/hvm/start_info.h, version 1.
struct hvm_start_info {
  std::uint32_t magic;
  std::uint32_t version;
  std::uint32_t flags;
  std::uint32_t nr_modules;
  std::uint64_t modlist_paddr;
  std::uint64_t cmdline_paddr;
  std::uint64_t rsdp_paddr;
  std::uint64_t memmap_paddr;
  std::uint32_t memmap_entries;
  std::uint32_t reserved;
};
static_assert(sizeof(hvm_start_info) == 56);

struct hvm_modlist_entry {
  std::uint64_t paddr;
  std::uint64_t size;
  std::uint64_t cmdline_paddr;
  std::uint64_t reserved;
};

struct hvm_memmap_table_entry {
  std::uint64_t addr;
  std::uint64_t size;
  std::uint32_t type;
  std::uint32_t reserved;
};

inline constexpr std::uint32_t hvm_start_magic = 0x336ec578;

} // namespace detail

// The start info, module list (the initrd) and memory map, all in the zero page's place.
inline void write_pvh_start_info(const guest_memory& memory, const linux_boot_layout& layout) {
  using namespace detail;
  const std::uint64_t modlist = zero_page_address + 0x40;
  const std::uint64_t memmap = zero_page_address + 0x80;
  const auto map = e820_map(memory);
  if (memmap + map.size() * sizeof(hvm_memmap_table_entry) > zero_page_address + 0x1000) {
    throw error("the guest memory map does not fit the PVH start info page");
  }
  memory.fill(zero_page_address, 0x1000, 0);

  hvm_start_info info{};
  info.magic = hvm_start_magic;
  info.version = 1;
  info.cmdline_paddr = cmdline_address;
  info.memmap_paddr = memmap;
  info.memmap_entries = static_cast<std::uint32_t>(map.size());
  if (layout.initrd_size != 0) {
    info.nr_modules = 1;
    info.modlist_paddr = modlist;
    memory.write_object(modlist, hvm_modlist_entry{layout.initrd_address, layout.initrd_size,
                                                   0, 0});
  }
  memory.write_object(zero_page_address, info);
  for (std::size_t i = 0; i < map.size(); ++i) {
    memory.write_object(memmap + i * sizeof(hvm_memmap_table_entry),
                        hvm_memmap_table_entry{map[i].addr, map[i].size, map[i].type, 0});
  }
}

// Loads the kernel, places the initrd as high as the kernel allows below the MMIO hole,
// copies the command line and writes the zero page.
[[nodiscard]] inline linux_boot_layout load_linux(const guest_memory& memory,
                                                  std::span<const std::uint8_t> kernel_image,
                                                  std::span<const std::uint8_t> initrd,
                                                  std::string_view cmdline,
                                                  boot_entry entry = boot_entry::automatic) {
  using namespace detail;
  linux_boot_layout layout;
  layout.kernel = load_kernel(memory, kernel_image);
  const auto& kernel = layout.kernel;
  if (entry == boot_entry::pvh && !kernel.pvh_entry) {
    throw error("PVH boot was asked for, but the kernel has no XEN_ELFNOTE_PHYS32_ENTRY note");
  }
  const bool pvh = kernel.pvh_entry && entry != boot_entry::linux_64;
  layout.protocol = pvh ? boot_entry::pvh : boot_entry::linux_64;
  layout.entry = pvh ? *kernel.pvh_entry : kernel.entry;

  if (cmdline.size() > kernel.cmdline_size || cmdline.size() + 1 > cmdline_capacity) {
    throw error(fmt::format("the kernel command line is {} bytes; this kernel accepts at most {}",
                            cmdline.size(),
                            std::min<std::uint64_t>(kernel.cmdline_size, cmdline_capacity - 1)));
  }
  memory.fill(cmdline_address, cmdline.size() + 1, 0);
  memory.write(cmdline_address, std::span<const std::uint8_t>(
                                    reinterpret_cast<const std::uint8_t*>(cmdline.data()),
                                    cmdline.size()));

  if (!initrd.empty()) {
    const std::uint64_t limit =
        std::min<std::uint64_t>(memory.low_ram_end(), std::uint64_t{kernel.initrd_addr_max} + 1);
    const std::uint64_t lowest = (kernel.end + 0xfff) & ~std::uint64_t{0xfff};
    if (initrd.size() > limit || ((limit - initrd.size()) & ~std::uint64_t{0xfff}) < lowest) {
      throw error(fmt::format("the initrd ({} bytes) does not fit between the kernel's end "
                              "{:#x} and {:#x}; give the guest more memory",
                              initrd.size(), lowest, limit));
    }
    layout.initrd_address = (limit - initrd.size()) & ~std::uint64_t{0xfff};
    layout.initrd_size = initrd.size();
    memory.write(layout.initrd_address, initrd);
  }

  if (pvh) {
    write_pvh_start_info(memory, layout);
    return layout;
  }

  boot_params params{};
  if (kernel.header) {
    params.hdr = *kernel.header;
  } else {
    params.hdr.boot_flag = boot_flag_magic;
    params.hdr.header = header_magic;
    params.hdr.kernel_alignment = default_kernel_alignment;
  }
  params.hdr.type_of_loader = loader_type_undefined;
  params.hdr.cmd_line_ptr = static_cast<std::uint32_t>(cmdline_address);
  params.hdr.cmdline_size = kernel.cmdline_size;
  params.hdr.ramdisk_image = static_cast<std::uint32_t>(layout.initrd_address);
  params.hdr.ramdisk_size = static_cast<std::uint32_t>(layout.initrd_size);

  const auto map = e820_map(memory);
  if (map.size() > E820_MAX_ENTRIES_ZEROPAGE) {
    throw error("the guest memory map has more entries than the zero page holds");
  }
  std::copy(map.begin(), map.end(), params.e820_table);
  params.e820_entries = static_cast<std::uint8_t>(map.size());
  memory.write_object(zero_page_address, params);
  return layout;
}

// Reads a whole file (a kernel, an initrd).
[[nodiscard]] inline std::vector<std::uint8_t> read_file(const std::filesystem::path& path) {
  unique_fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) {
    throw_errno(fmt::format("open {}", path.string()));
  }
  std::vector<std::uint8_t> bytes;
  std::uint8_t buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      throw_errno(fmt::format("read {}", path.string()));
    }
    if (n == 0) {
      return bytes;
    }
    bytes.insert(bytes.end(), buffer, buffer + n);
  }
}

} // namespace compactor::vmm::x86
