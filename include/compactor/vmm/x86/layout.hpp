// Where the VMM puts its boot structures in low guest memory. All lie below 1 MiB, the usual
// load address of a kernel, and outside the MP table area at the top of base memory.
#pragma once

#include <cstdint>

namespace compactor::vmm::x86 {

inline constexpr std::uint64_t gdt_address = 0x500;
inline constexpr std::uint64_t idt_address = 0x520;
inline constexpr std::uint64_t zero_page_address = 0x7000; // struct boot_params
inline constexpr std::uint64_t boot_stack_top = 0x8ff0;
inline constexpr std::uint64_t pml4_address = 0x9000;
inline constexpr std::uint64_t pdpt_address = 0xa000;
inline constexpr std::uint64_t pd_address = 0xb000; // four page directories, 0xb000-0xefff
inline constexpr std::uint64_t cmdline_address = 0x20000;
inline constexpr std::uint64_t cmdline_capacity = 0x10000;
// Linux looks for the MP floating pointer in the last KiB of base memory (mpparse.c).
inline constexpr std::uint64_t mptable_address = 0x9fc00;
inline constexpr std::uint64_t base_memory_end = 0xa0000;
inline constexpr std::uint64_t kernel_load_address = 0x100000;

// Fixed MMIO addresses of the in-kernel interrupt controllers.
inline constexpr std::uint64_t ioapic_address = 0xfec00000;
inline constexpr std::uint64_t lapic_address = 0xfee00000;
// Three pages KVM needs for its real-mode TSS on Intel hosts, and the identity-map page.
inline constexpr std::uint64_t kvm_tss_address = 0xfffbd000;
inline constexpr std::uint64_t kvm_identity_map_address = 0xfffbc000;

// Virtio-mmio and other MMIO windows the machine assigns, in the 32-bit hole.
inline constexpr std::uint64_t device_mmio_base = 0xd0000000;
inline constexpr std::uint64_t device_mmio_end = 0xfec00000;

} // namespace compactor::vmm::x86
