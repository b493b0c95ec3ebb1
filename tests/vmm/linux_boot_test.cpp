#include <catch2/catch.hpp>

#include <elf.h>

#include <cstring>
#include <vector>

#include <compactor/vmm/x86/linux_boot.hpp>

using namespace compactor::vmm;
using namespace compactor::vmm::x86;

namespace {

// A bzImage as the boot protocol describes it: `setup_sects` sectors of real-mode setup after
// the boot sector, a setup header at 0x1f1, then the protected-mode kernel.
std::vector<std::uint8_t> make_bzimage(std::uint16_t version, std::uint16_t xloadflags,
                                       std::size_t payload_size) {
  const std::size_t setup_sectors = 4;
  std::vector<std::uint8_t> image((setup_sectors + 1) * 512 + payload_size, 0);
  setup_header header{};
  header.setup_sects = setup_sectors;
  header.boot_flag = 0xaa55;
  header.header = 0x53726448;
  header.version = version;
  header.xloadflags = xloadflags;
  header.cmdline_size = 255;
  header.initrd_addr_max = 0x3fffffff;
  header.init_size = 0x200000;
  header.kernel_alignment = 0x200000;
  header.jump = 0x66eb; // jmp over the header, to 0x268
  std::memcpy(&image[0x1f1], &header, sizeof header);
  for (std::size_t i = 0; i < payload_size; ++i) {
    image[(setup_sectors + 1) * 512 + i] = static_cast<std::uint8_t>(i * 7);
  }
  return image;
}

std::vector<std::uint8_t> make_elf(std::uint64_t paddr, std::uint64_t filesz,
                                   std::uint64_t memsz) {
  std::vector<std::uint8_t> image(sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr) + filesz, 0xcc);
  Elf64_Ehdr ehdr{};
  std::memcpy(ehdr.e_ident, ELFMAG, SELFMAG);
  ehdr.e_ident[EI_CLASS] = ELFCLASS64;
  ehdr.e_ident[EI_DATA] = ELFDATA2LSB;
  ehdr.e_machine = EM_X86_64;
  ehdr.e_entry = 0xffffffff80000000 + 0x10; // a virtual entry, as a linker may leave it
  ehdr.e_phoff = sizeof(Elf64_Ehdr);
  ehdr.e_phentsize = sizeof(Elf64_Phdr);
  ehdr.e_phnum = 1;
  Elf64_Phdr phdr{};
  phdr.p_type = PT_LOAD;
  phdr.p_offset = sizeof(Elf64_Ehdr) + sizeof(Elf64_Phdr);
  phdr.p_vaddr = 0xffffffff80000000;
  phdr.p_paddr = paddr;
  phdr.p_filesz = filesz;
  phdr.p_memsz = memsz;
  std::memcpy(image.data(), &ehdr, sizeof ehdr);
  std::memcpy(image.data() + sizeof ehdr, &phdr, sizeof phdr);
  return image;
}

} // namespace

TEST_CASE("linux boot: a bzImage loads at 1 MiB with its header in the zero page", "[unit]") {
  const guest_memory memory(64 * layout::mib);
  const auto image = make_bzimage(0x020f, XLF_KERNEL_64, 0x3000);
  const std::vector<std::uint8_t> initrd(10000, 0x5a);

  const auto boot = load_linux(memory, image, initrd, "console=ttyS0 quiet");
  CHECK(boot.kernel.format == kernel_format::bzimage);
  CHECK(boot.entry == 0x100200);
  CHECK(memory.read_object<std::uint8_t>(0x100000 + 5) == 35);

  const auto params = memory.read_object<boot_params>(boot.zero_page);
  CHECK(params.hdr.type_of_loader == 0xff);
  CHECK(params.hdr.version == 0x020f);
  CHECK(params.hdr.cmd_line_ptr == cmdline_address);
  CHECK(params.hdr.ramdisk_size == initrd.size());
  CHECK(params.hdr.ramdisk_image == boot.initrd_address);
  CHECK(boot.initrd_address % 4096 == 0);
  CHECK(boot.initrd_address >= 0x100000 + 0x200000); // beyond init_size
  CHECK(boot.initrd_address + initrd.size() <= 64 * layout::mib);
  CHECK(memory.read_object<std::uint8_t>(boot.initrd_address + 9999) == 0x5a);

  char cmdline[32] = {};
  memory.read(cmdline_address, std::span(reinterpret_cast<std::uint8_t*>(cmdline), 20));
  CHECK(std::string(cmdline) == "console=ttyS0 quiet");

  REQUIRE(params.e820_entries == 3);
  CHECK(params.e820_table[0].addr == 0);
  CHECK(params.e820_table[1].type == 2);
  CHECK(params.e820_table[2].addr == 0x100000);
  CHECK(params.e820_table[2].addr + params.e820_table[2].size == 64 * layout::mib);
}

TEST_CASE("linux boot: bzImages without a 64-bit entry or header are refused", "[unit]") {
  const guest_memory memory(16 * layout::mib);
  CHECK_THROWS_WITH(load_bzimage(memory, make_bzimage(0x020b, XLF_KERNEL_64, 512)),
                    Catch::Contains("no 64-bit entry"));
  CHECK_THROWS_WITH(load_bzimage(memory, make_bzimage(0x020f, 0, 512)),
                    Catch::Contains("no 64-bit entry"));
  auto image = make_bzimage(0x020f, XLF_KERNEL_64, 512);
  image[0x202] = 'X';
  CHECK_THROWS_WITH(load_kernel(memory, image), Catch::Contains("HdrS"));
  CHECK_THROWS_AS(load_kernel(memory, std::vector<std::uint8_t>(100, 0)), kernel_image_error);
}

TEST_CASE("linux boot: command line and initrd limits are enforced", "[unit]") {
  const guest_memory memory(8 * layout::mib);
  const auto image = make_bzimage(0x020f, XLF_KERNEL_64, 512);
  CHECK_THROWS_WITH(load_linux(memory, image, {}, std::string(256, 'a')),
                    Catch::Contains("at most 255"));
  const std::vector<std::uint8_t> huge(7 * layout::mib, 1);
  CHECK_THROWS_WITH(load_linux(memory, image, huge, ""), Catch::Contains("does not fit"));
}

TEST_CASE("linux boot: ELF segments load at their physical address, bss zeroed", "[unit]") {
  const guest_memory memory(16 * layout::mib);
  memory.fill(0x200000, 0x2000, 0xee);
  const auto boot = load_linux(memory, make_elf(0x200000, 0x100, 0x2000), {}, "x");
  CHECK(boot.kernel.format == kernel_format::elf);
  CHECK(boot.entry == 0x200010);
  CHECK(memory.read_object<std::uint8_t>(0x2000ff) == 0xcc);
  CHECK(memory.read_object<std::uint8_t>(0x200100) == 0);
  CHECK(memory.read_object<std::uint8_t>(0x201fff) == 0);
  const auto params = memory.read_object<boot_params>(zero_page_address);
  CHECK(params.hdr.boot_flag == 0xaa55);
  CHECK(params.hdr.ramdisk_size == 0);
}

TEST_CASE("linux boot: ELF files that lie are refused before guest memory is touched",
          "[unit]") {
  const guest_memory memory(16 * layout::mib);
  CHECK_THROWS_WITH(load_elf_kernel(memory, make_elf(15 * layout::mib, 0x100, 2 * layout::mib)),
                    Catch::Contains("does not fit"));
  CHECK_THROWS_WITH(load_elf_kernel(memory, make_elf(0x200000, 0x200, 0x100)),
                    Catch::Contains("outside the file"));
  auto truncated = make_elf(0x200000, 0x100, 0x100);
  truncated.resize(sizeof(Elf64_Ehdr) + 8);
  CHECK_THROWS_AS(load_elf_kernel(memory, truncated), kernel_image_error);
  auto huge_offset = make_elf(0x200000, 0x100, 0x100);
  const std::uint64_t offset = ~std::uint64_t{0} - 8;
  std::memcpy(huge_offset.data() + sizeof(Elf64_Ehdr) + offsetof(Elf64_Phdr, p_offset), &offset,
              sizeof offset);
  CHECK_THROWS_WITH(load_elf_kernel(memory, huge_offset), Catch::Contains("outside the file"));
}

TEST_CASE("linux boot: a Xen PHYS32_ENTRY note selects PVH with a start info", "[unit]") {
  // One PT_LOAD, then a PT_NOTE holding the note "Xen" type 18 with the 32-bit entry.
  auto image = make_elf(0x200000, 0x100, 0x100);
  const std::uint32_t note[] = {4, 4, 18, 0x006e6558 /* "Xen\0" */, 0x200040};
  const std::uint64_t note_offset = image.size();
  image.resize(image.size() + sizeof note);
  std::memcpy(image.data() + note_offset, note, sizeof note);
  Elf64_Ehdr ehdr{};
  std::memcpy(&ehdr, image.data(), sizeof ehdr);
  ehdr.e_phnum = 2;
  ehdr.e_phoff = image.size();
  Elf64_Phdr phdr{};
  std::memcpy(&phdr, image.data() + sizeof ehdr, sizeof phdr);
  Elf64_Phdr note_phdr{};
  note_phdr.p_type = PT_NOTE;
  note_phdr.p_offset = note_offset;
  note_phdr.p_filesz = sizeof note;
  image.resize(image.size() + 2 * sizeof(Elf64_Phdr));
  std::memcpy(image.data() + ehdr.e_phoff, &phdr, sizeof phdr);
  std::memcpy(image.data() + ehdr.e_phoff + sizeof phdr, &note_phdr, sizeof note_phdr);
  std::memcpy(image.data(), &ehdr, sizeof ehdr);

  const guest_memory memory(16 * layout::mib);
  const std::vector<std::uint8_t> initrd(100, 1);
  const auto pvh = load_linux(memory, image, initrd, "console=ttyS0");
  CHECK(pvh.protocol == boot_entry::pvh);
  CHECK(pvh.entry == 0x200040);
  CHECK(memory.read_object<std::uint32_t>(pvh.zero_page) == 0x336ec578);
  CHECK(memory.read_object<std::uint32_t>(pvh.zero_page + 0x0c) == 1); // the initrd module
  CHECK(memory.read_object<std::uint64_t>(pvh.zero_page + 0x18) == cmdline_address);
  CHECK(memory.read_object<std::uint32_t>(pvh.zero_page + 0x30) == 3); // memory map entries

  const auto linux64 = load_linux(memory, image, initrd, "", boot_entry::linux_64);
  CHECK(linux64.protocol == boot_entry::linux_64);
  CHECK(linux64.entry == 0x200010);

  CHECK_THROWS_WITH(load_linux(memory, make_elf(0x200000, 0x100, 0x100), {}, "", boot_entry::pvh),
                    Catch::Contains("no XEN_ELFNOTE_PHYS32_ENTRY"));
}

TEST_CASE("linux boot: a missing kernel file names the path and the reason", "[unit]") {
  CHECK_THROWS_WITH(read_file("/nonexistent/vmlinux"),
                    Catch::Contains("/nonexistent/vmlinux") &&
                        Catch::Contains("No such file or directory"));
}
