// Model-specific registers set before the first entry, as a BIOS leaves them: system-call
// MSRs cleared, fast string operations enabled (Intel SDM vol. 4, table 2-2).
#pragma once

#include <linux/kvm.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include <compactor/vmm/kvm.hpp>

namespace compactor::vmm::x86 {

inline constexpr std::uint32_t msr_ia32_tsc = 0x10;
inline constexpr std::uint32_t msr_ia32_sysenter_cs = 0x174;
inline constexpr std::uint32_t msr_ia32_sysenter_esp = 0x175;
inline constexpr std::uint32_t msr_ia32_sysenter_eip = 0x176;
inline constexpr std::uint32_t msr_ia32_misc_enable = 0x1a0;
inline constexpr std::uint32_t msr_star = 0xc0000081;
inline constexpr std::uint32_t msr_lstar = 0xc0000082;
inline constexpr std::uint32_t msr_cstar = 0xc0000083;
inline constexpr std::uint32_t msr_syscall_mask = 0xc0000084;
inline constexpr std::uint32_t msr_kernel_gs_base = 0xc0000102;

inline constexpr std::uint64_t misc_enable_fast_string = 1;

// The boot MSRs that KVM on this host knows (`supported` from KVM_GET_MSR_INDEX_LIST).
[[nodiscard]] inline std::vector<kvm_msr_entry> boot_msrs(
    const std::vector<std::uint32_t>& supported) {
  const std::pair<std::uint32_t, std::uint64_t> wanted[] = {
      {msr_ia32_sysenter_cs, 0}, {msr_ia32_sysenter_esp, 0}, {msr_ia32_sysenter_eip, 0},
      {msr_star, 0},             {msr_lstar, 0},             {msr_cstar, 0},
      {msr_syscall_mask, 0},     {msr_kernel_gs_base, 0},    {msr_ia32_tsc, 0},
      {msr_ia32_misc_enable, misc_enable_fast_string}};
  std::vector<kvm_msr_entry> result;
  for (const auto& [index, value] : wanted) {
    if (std::find(supported.begin(), supported.end(), index) != supported.end()) {
      kvm_msr_entry entry{};
      entry.index = index;
      entry.data = value;
      result.push_back(entry);
    }
  }
  return result;
}

} // namespace compactor::vmm::x86
