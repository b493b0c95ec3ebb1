// The MultiProcessor Specification table (Intel MP Spec 1.4, chapter 4) that tells a guest
// kernel how many CPUs there are and how the ISA interrupts reach the IOAPIC, for guests
// without ACPI.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/vmm/guest_memory.hpp>
#include <compactor/vmm/x86/layout.hpp>

namespace compactor::vmm::x86 {

namespace detail {

inline void put8(std::vector<std::uint8_t>& out, std::uint8_t value) { out.push_back(value); }
inline void put16(std::vector<std::uint8_t>& out, std::uint16_t value) {
  out.push_back(static_cast<std::uint8_t>(value));
  out.push_back(static_cast<std::uint8_t>(value >> 8));
}
inline void put32(std::vector<std::uint8_t>& out, std::uint32_t value) {
  put16(out, static_cast<std::uint16_t>(value));
  put16(out, static_cast<std::uint16_t>(value >> 16));
}
inline void put_text(std::vector<std::uint8_t>& out, const char* text, std::size_t size) {
  for (std::size_t i = 0; i < size; ++i) {
    out.push_back(static_cast<std::uint8_t>(text[i]));
  }
}

// The byte that makes the sum of `bytes` zero (MP Spec 4.1 and 4.2: CHECKSUM).
[[nodiscard]] inline std::uint8_t checksum(const std::uint8_t* bytes, std::size_t size) {
  const unsigned sum = std::accumulate(bytes, bytes + size, 0u);
  return static_cast<std::uint8_t>(0x100 - (sum & 0xff));
}

} // namespace detail

inline constexpr std::size_t mp_floating_pointer_size = 16;
inline constexpr std::size_t mp_header_size = 44;
inline constexpr std::size_t mp_processor_entry_size = 20;
inline constexpr std::size_t mp_other_entry_size = 8;
inline constexpr unsigned mp_isa_irqs = 16;

// The largest vCPU count whose table fits in the last KiB of base memory.
inline constexpr unsigned mptable_max_vcpus =
    (base_memory_end - mptable_address - mp_floating_pointer_size - mp_header_size -
     mp_other_entry_size * (2 + mp_isa_irqs + 2)) /
    mp_processor_entry_size;

// Builds the floating pointer and configuration table for `vcpu_count` CPUs (APIC ids 0..n-1,
// the first one the bootstrap processor) to sit at `address`.
[[nodiscard]] inline std::vector<std::uint8_t> build_mptable(unsigned vcpu_count,
                                                             std::uint32_t address) {
  using namespace detail;
  if (vcpu_count == 0 || vcpu_count > mptable_max_vcpus) {
    throw error(fmt::format("{} vCPUs do not fit the MP table (1 to {})", vcpu_count,
                            mptable_max_vcpus));
  }
  const std::uint8_t ioapic_id = static_cast<std::uint8_t>(vcpu_count);
  const std::uint32_t table_address = address + mp_floating_pointer_size;

  std::vector<std::uint8_t> table;
  put_text(table, "PCMP", 4);
  put16(table, 0); // base table length, patched below
  put8(table, 4);  // specification revision 1.4
  put8(table, 0);  // checksum, patched below
  put_text(table, "COMPACTR", 8);
  put_text(table, "MICROVM     ", 12);
  put32(table, 0); // no OEM table
  put16(table, 0);
  put16(table, 0); // entry count, patched below
  put32(table, static_cast<std::uint32_t>(lapic_address));
  put16(table, 0); // no extended table
  put8(table, 0);
  put8(table, 0);

  std::uint16_t entries = 0;
  for (unsigned cpu = 0; cpu < vcpu_count; ++cpu) {
    put8(table, 0); // 4.3.1 processor entry
    put8(table, static_cast<std::uint8_t>(cpu));
    put8(table, 0x14);                    // local APIC version
    put8(table, cpu == 0 ? 0x03 : 0x01);  // enabled, bootstrap processor
    put32(table, 0x600);                  // family 6
    put32(table, (1u << 0) | (1u << 9));  // FPU, on-chip APIC
    put32(table, 0);
    put32(table, 0);
    ++entries;
  }

  put8(table, 1); // 4.3.2 bus entry
  put8(table, 0);
  put_text(table, "ISA   ", 6);
  ++entries;

  put8(table, 2); // 4.3.3 I/O APIC entry
  put8(table, ioapic_id);
  put8(table, 0x11);
  put8(table, 0x01); // enabled
  put32(table, static_cast<std::uint32_t>(ioapic_address));
  ++entries;

  for (unsigned irq = 0; irq < mp_isa_irqs; ++irq) {
    put8(table, 3); // 4.3.4 I/O interrupt assignment: ISA IRQ n on IOAPIC pin n
    put8(table, 0); // vectored interrupt
    put16(table, 0); // bus-default polarity and trigger
    put8(table, 0);
    put8(table, static_cast<std::uint8_t>(irq));
    put8(table, ioapic_id);
    put8(table, static_cast<std::uint8_t>(irq));
    ++entries;
  }

  for (std::uint8_t lint = 0; lint < 2; ++lint) {
    put8(table, 4);               // 4.3.5 local interrupt assignment
    put8(table, lint == 0 ? 3 : 1); // ExtINT on LINT0, NMI on LINT1
    put16(table, 0);
    put8(table, 0);
    put8(table, 0);
    put8(table, 0xff); // every local APIC
    put8(table, lint);
    ++entries;
  }

  const auto length = static_cast<std::uint16_t>(table.size());
  std::memcpy(&table[4], &length, 2);
  std::memcpy(&table[34], &entries, 2);
  table[7] = checksum(table.data(), table.size());

  std::vector<std::uint8_t> result;
  put_text(result, "_MP_", 4);
  put32(result, table_address);
  put8(result, 1); // length in 16-byte units
  put8(result, 4);
  put8(result, 0); // checksum, patched below
  put8(result, 0); // feature byte 1: a configuration table is present
  put32(result, 0);
  result[10] = checksum(result.data(), result.size());
  result.insert(result.end(), table.begin(), table.end());
  return result;
}

inline void write_mptable(const guest_memory& memory, unsigned vcpu_count) {
  const auto bytes = build_mptable(vcpu_count, static_cast<std::uint32_t>(mptable_address));
  memory.write(mptable_address, std::span<const std::uint8_t>(bytes));
}

} // namespace compactor::vmm::x86
