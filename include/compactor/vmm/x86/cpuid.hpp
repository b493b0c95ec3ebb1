// The CPUID table each vCPU sees: what KVM supports, with the topology and identity of that
// vCPU filled in (Intel SDM vol. 2A, CPUID leaves 01H, 04H, 0BH), the TSC-deadline timer
// offered where KVM emulates it, and the KVM paravirtual signature leaf present
// (Documentation/virt/kvm/x86/cpuid.rst).
#pragma once

#include <linux/kvm.h>

#include <bit>
#include <cstdint>
#include <cstring>

#include <compactor/vmm/kvm.hpp>

namespace compactor::vmm::x86 {

inline constexpr std::uint32_t kvm_signature_leaf = 0x40000000;
inline constexpr std::uint32_t kvm_features_leaf = 0x40000001;

// Bits needed to number `count` logical processors.
[[nodiscard]] constexpr std::uint32_t id_bits(unsigned count) noexcept {
  return count <= 1 ? 0 : static_cast<std::uint32_t>(std::bit_width(count - 1u));
}

// One package with `vcpu_count` cores, one thread each; vCPU `index` has APIC id `index`.
//
// `tsc_deadline_timer`: KVM emulates the local APIC's TSC-deadline mode in the in-kernel
// LAPIC (KVM_CAP_TSC_DEADLINE_TIMER) but leaves the CPUID bit out of
// KVM_GET_SUPPORTED_CPUID, for the VMM to set (api.rst 4.46). Linux uses that mode when it is
// offered and otherwise calibrates the LAPIC timer against 25 PIT ticks (100 ms at HZ=250) on
// every boot.
[[nodiscard]] inline cpuid_table cpuid_for_vcpu(cpuid_table table, unsigned index,
                                                unsigned vcpu_count, bool tsc_deadline_timer) {
  bool has_signature = false;
  for (auto& entry : table) {
    switch (entry.function) {
    case 0x1:
      // EBX[31:24] initial APIC id, EBX[23:16] logical processors in the package.
      entry.ebx = (entry.ebx & 0xffff) | ((vcpu_count & 0xff) << 16) | ((index & 0xff) << 24);
      entry.ecx |= 1u << 31; // running under a hypervisor
      if (tsc_deadline_timer) {
        entry.ecx |= 1u << 24;
      }
      if (vcpu_count > 1) {
        entry.edx |= 1u << 28; // HTT: EBX[23:16] is valid
      }
      break;
    case 0x4:
      // EAX[31:26]: cores per package - 1; EAX[25:14]: logical processors sharing the cache
      // - 1 (each core its own caches).
      entry.eax = (entry.eax & 0x3fff) | ((vcpu_count - 1) << 26);
      break;
    case 0xb:
    case 0x1f:
      // Level 0: SMT, one thread per core. Level 1: cores. Then the list ends.
      entry.edx = index;
      if (entry.index == 0) {
        entry.eax = 0;
        entry.ebx = 1;
        entry.ecx = (1u << 8) | 0;
      } else if (entry.index == 1) {
        entry.eax = id_bits(vcpu_count);
        entry.ebx = vcpu_count;
        entry.ecx = (2u << 8) | 1;
      } else {
        entry.eax = 0;
        entry.ebx = 0;
        entry.ecx = entry.index;
      }
      break;
    case kvm_signature_leaf:
      has_signature = true;
      break;
    default:
      break;
    }
  }

  if (!has_signature) {
    kvm_cpuid_entry2 entry{};
    entry.function = kvm_signature_leaf;
    entry.eax = kvm_features_leaf;
    std::memcpy(&entry.ebx, "KVMK", 4);
    std::memcpy(&entry.ecx, "VMKV", 4);
    std::memcpy(&entry.edx, "M\0\0\0", 4);
    table.push_back(entry);
  }
  return table;
}

} // namespace compactor::vmm::x86
