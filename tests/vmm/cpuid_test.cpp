#include <catch2/catch.hpp>

#include <cstring>

#include <compactor/vmm/x86/cpuid.hpp>

using namespace compactor::vmm;

namespace {

kvm_cpuid_entry2 leaf(std::uint32_t function, std::uint32_t index = 0) {
  kvm_cpuid_entry2 entry{};
  entry.function = function;
  entry.index = index;
  entry.ebx = 0x00000800; // CLFLUSH line size 8 qwords
  return entry;
}

const kvm_cpuid_entry2* find(const cpuid_table& table, std::uint32_t function,
                             std::uint32_t index = 0) {
  for (const auto& entry : table) {
    if (entry.function == function && entry.index == index) {
      return &entry;
    }
  }
  return nullptr;
}

} // namespace

TEST_CASE("cpuid: each vCPU gets its APIC id, the topology and the KVM signature", "[unit]") {
  const cpuid_table supported = {leaf(0x1), leaf(0x4), leaf(0xb, 0), leaf(0xb, 1),
                                 leaf(0xb, 2)};
  const auto table = x86::cpuid_for_vcpu(supported, 3, 4, false);

  const auto* basic = find(table, 0x1);
  REQUIRE(basic != nullptr);
  CHECK(basic->ebx >> 24 == 3);
  CHECK(((basic->ebx >> 16) & 0xff) == 4);
  CHECK((basic->ebx & 0xffff) == 0x0800);
  CHECK((basic->ecx & (1u << 31)) != 0);
  CHECK((basic->edx & (1u << 28)) != 0);
  CHECK((basic->ecx & (1u << 24)) == 0); // no TSC-deadline timer unless KVM emulates one

  CHECK(find(table, 0x4)->eax >> 26 == 3);
  CHECK(find(table, 0xb, 0)->edx == 3);
  CHECK(find(table, 0xb, 1)->ebx == 4);
  CHECK(find(table, 0xb, 1)->eax == 2);
  CHECK(((find(table, 0xb, 2)->ecx >> 8) & 0xff) == 0);

  const auto* signature = find(table, x86::kvm_signature_leaf);
  REQUIRE(signature != nullptr);
  char text[13] = {};
  std::memcpy(text, &signature->ebx, 4);
  std::memcpy(text + 4, &signature->ecx, 4);
  std::memcpy(text + 8, &signature->edx, 4);
  CHECK(std::string(text) == "KVMKVMKVM");
}

TEST_CASE("cpuid: the TSC-deadline timer is offered when KVM emulates it", "[unit]") {
  const cpuid_table supported = {leaf(0x1)};
  const auto table = x86::cpuid_for_vcpu(supported, 0, 1, true);
  CHECK((find(table, 0x1)->ecx & (1u << 24)) != 0);
  // One vCPU: no HTT bit.
  CHECK((find(table, 0x1)->edx & (1u << 28)) == 0);
}
