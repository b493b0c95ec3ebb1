// The CPU state a 64-bit kernel expects at its entry point (Documentation/x86/boot.rst,
// "64-bit Boot Protocol"): long mode with identity-mapped paging, flat __BOOT_CS (0x10) and
// __BOOT_DS (0x18) segments, interrupts off.
#pragma once

#include <linux/kvm.h>

#include <array>
#include <cstdint>
#include <cstring>

#include <compactor/vmm/guest_memory.hpp>
#include <compactor/vmm/kvm.hpp>
#include <compactor/vmm/x86/layout.hpp>

namespace compactor::vmm::x86 {

namespace detail {

// Descriptor flags as in the second dword of a GDT entry, bits 8-23 squeezed to 16 bits:
// type (0-3), S (4), DPL (5-6), P (7), AVL (12), L (13), D/B (14), G (15).
inline constexpr std::uint16_t code64_flags = 0xa09b; // G, L, P, S, execute/read, accessed
inline constexpr std::uint16_t code32_flags = 0xc09b; // G, D/B, P, S, execute/read, accessed
inline constexpr std::uint16_t data_flags = 0xc093;   // G, D/B, P, S, read/write, accessed
inline constexpr std::uint16_t tss_flags = 0x808b;    // G, P, busy TSS

[[nodiscard]] constexpr std::uint64_t gdt_entry(std::uint16_t flags, std::uint32_t base,
                                                std::uint32_t limit) noexcept {
  return ((std::uint64_t{base} & 0xff000000) << 32) | ((std::uint64_t{flags} & 0xf0ff) << 40) |
         ((std::uint64_t{limit} & 0xf0000) << 32) | ((std::uint64_t{base} & 0x00ffffff) << 16) |
         (std::uint64_t{limit} & 0xffff);
}

[[nodiscard]] constexpr kvm_segment segment(std::uint16_t flags, std::uint16_t selector) noexcept {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff; // 0xfffff in 4 KiB units
  s.selector = selector;
  s.type = flags & 0xf;
  s.s = (flags >> 4) & 1;
  s.dpl = (flags >> 5) & 3;
  s.present = (flags >> 7) & 1;
  s.avl = (flags >> 12) & 1;
  s.l = (flags >> 13) & 1;
  s.db = (flags >> 14) & 1;
  s.g = (flags >> 15) & 1;
  return s;
}

inline constexpr std::uint64_t cr0_pe = 1ull << 0;
inline constexpr std::uint64_t cr0_et = 1ull << 4;
inline constexpr std::uint64_t cr0_ne = 1ull << 5;
inline constexpr std::uint64_t cr0_pg = 1ull << 31;
inline constexpr std::uint64_t cr4_pae = 1ull << 5;
inline constexpr std::uint64_t efer_lme = 1ull << 8;
inline constexpr std::uint64_t efer_lma = 1ull << 10;

inline constexpr std::uint64_t page_present = 1;
inline constexpr std::uint64_t page_writable = 2;
inline constexpr std::uint64_t page_large = 0x80;

} // namespace detail

inline constexpr std::uint16_t pvh_cs = 0x08;
inline constexpr std::uint16_t boot_cs = 0x10;
inline constexpr std::uint16_t boot_ds = 0x18;
inline constexpr std::uint16_t boot_tss = 0x20;

// Writes the GDT (a 32-bit code segment for PVH, then the 64-bit boot protocol's segments),
// an empty IDT and page tables identity-mapping the low 4 GiB with 2 MiB pages (the kernel,
// the zero page, the command line, and the MMIO hole for probes).
inline void write_long_mode_tables(const guest_memory& memory) {
  using namespace detail;
  const std::array<std::uint64_t, 5> gdt = {
      0, gdt_entry(code32_flags, 0, 0xfffff), gdt_entry(code64_flags, 0, 0xfffff),
      gdt_entry(data_flags, 0, 0xfffff),
      gdt_entry(tss_flags, 0, 0xfffff)};
  memory.write_object(gdt_address, gdt);
  memory.write_object(idt_address, std::uint64_t{0});

  memory.fill(pml4_address, 0x1000, 0);
  memory.fill(pdpt_address, 0x1000, 0);
  memory.write_object(pml4_address, pdpt_address | page_present | page_writable);
  for (std::uint64_t directory = 0; directory < 4; ++directory) {
    const std::uint64_t pd = pd_address + directory * 0x1000;
    memory.write_object(pdpt_address + directory * 8, pd | page_present | page_writable);
    for (std::uint64_t entry = 0; entry < 512; ++entry) {
      const std::uint64_t physical = (directory * 512 + entry) << 21;
      memory.write_object(pd + entry * 8, physical | page_present | page_writable | page_large);
    }
  }
}

// Puts `cpu` in 64-bit mode on the tables above, at `entry` with %rsi = `rsi`.
inline void enter_long_mode(vcpu& cpu, std::uint64_t entry, std::uint64_t rsi,
                            std::uint64_t stack_top = boot_stack_top) {
  using namespace detail;
  auto sregs = cpu.sregs();
  sregs.gdt.base = gdt_address;
  sregs.gdt.limit = 5 * 8 - 1;
  sregs.idt.base = idt_address;
  sregs.idt.limit = 7;
  sregs.cs = segment(code64_flags, boot_cs);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(data_flags, boot_ds);
  sregs.tr = segment(tss_flags, boot_tss);
  sregs.cr0 |= cr0_pe | cr0_et | cr0_ne | cr0_pg;
  sregs.cr3 = pml4_address;
  sregs.cr4 |= cr4_pae;
  sregs.efer |= efer_lme | efer_lma;
  cpu.set_sregs(sregs);

  kvm_regs regs{};
  regs.rflags = 0x2; // bit 1 is reserved and reads as 1; IF is clear
  regs.rip = entry;
  regs.rsp = stack_top;
  regs.rbp = stack_top;
  regs.rsi = rsi;
  cpu.set_regs(regs);

  kvm_fpu fpu{};
  fpu.fcw = 0x37f; // the x87 state after FNINIT
  fpu.mxcsr = 0x1f80;
  cpu.set_fpu(fpu);
}

// Puts `cpu` in 32-bit protected mode without paging at `entry`, with %ebx = `start_info`:
// the PVH entry state (Xen docs/misc/pvh.pandoc, "x86/HVM direct boot ABI").
inline void enter_pvh(vcpu& cpu, std::uint64_t entry, std::uint64_t start_info) {
  using namespace detail;
  auto sregs = cpu.sregs();
  sregs.gdt.base = gdt_address;
  sregs.gdt.limit = 5 * 8 - 1;
  sregs.idt.base = idt_address;
  sregs.idt.limit = 7;
  sregs.cs = segment(code32_flags, pvh_cs);
  sregs.ds = sregs.es = sregs.fs = sregs.gs = sregs.ss = segment(data_flags, boot_ds);
  sregs.tr = segment(tss_flags, boot_tss);
  sregs.tr.limit = 0x67;
  sregs.tr.g = 0;
  sregs.cr0 = (sregs.cr0 | cr0_pe | cr0_et) & ~cr0_pg;
  sregs.cr4 = 0;
  sregs.efer = 0;
  cpu.set_sregs(sregs);

  kvm_regs regs{};
  regs.rflags = 0x2;
  regs.rip = entry;
  regs.rbx = start_info;
  cpu.set_regs(regs);

  kvm_fpu fpu{};
  fpu.fcw = 0x37f;
  fpu.mxcsr = 0x1f80;
  cpu.set_fpu(fpu);
}

// LINT0 delivers the 8259's ExtINT and LINT1 NMIs, as a PC's BIOS leaves the local APIC
// (Intel SDM vol. 3, 10.5.1 "Local Vector Table"); both unmasked.
inline void configure_lapic_lints(vcpu& cpu) {
  constexpr std::size_t lvt_lint0 = 0x350;
  constexpr std::size_t lvt_lint1 = 0x360;
  constexpr std::uint32_t delivery_extint = 0x700;
  constexpr std::uint32_t delivery_nmi = 0x400;

  auto state = cpu.lapic();
  const auto set = [&](std::size_t offset, std::uint32_t value) {
    std::memcpy(&state.regs[offset], &value, sizeof value);
  };
  set(lvt_lint0, delivery_extint);
  set(lvt_lint1, delivery_nmi);
  cpu.set_lapic(state);
}

} // namespace compactor::vmm::x86
