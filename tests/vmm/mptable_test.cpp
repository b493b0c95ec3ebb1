#include <catch2/catch.hpp>

#include <cstring>
#include <numeric>

#include <compactor/vmm/x86/mptable.hpp>

using namespace compactor::vmm::x86;

namespace {

unsigned byte_sum(const std::uint8_t* bytes, std::size_t size) {
  return std::accumulate(bytes, bytes + size, 0u) & 0xff;
}

} // namespace

TEST_CASE("mptable: floating pointer and table carry valid checksums and every CPU",
          "[unit]") {
  for (const unsigned cpus : {1u, 2u, 4u, mptable_max_vcpus}) {
    const auto bytes = build_mptable(cpus, 0x9fc00);
    REQUIRE(bytes.size() <= base_memory_end - mptable_address);
    CHECK(std::memcmp(bytes.data(), "_MP_", 4) == 0);
    CHECK(byte_sum(bytes.data(), 16) == 0);

    std::uint32_t table_address = 0;
    std::memcpy(&table_address, &bytes[4], 4);
    CHECK(table_address == 0x9fc00 + 16);
    const std::uint8_t* table = bytes.data() + 16;
    CHECK(std::memcmp(table, "PCMP", 4) == 0);
    std::uint16_t length = 0;
    std::uint16_t entries = 0;
    std::memcpy(&length, table + 4, 2);
    std::memcpy(&entries, table + 34, 2);
    CHECK(length == bytes.size() - 16);
    CHECK(byte_sum(table, length) == 0);
    CHECK(entries == cpus + 1 + 1 + 16 + 2);

    // Processor entries come first: APIC ids 0..n-1, only the first is the BSP.
    for (unsigned cpu = 0; cpu < cpus; ++cpu) {
      const std::uint8_t* entry = table + 44 + cpu * 20;
      CHECK(entry[0] == 0);
      CHECK(entry[1] == cpu);
      CHECK(entry[3] == (cpu == 0 ? 3 : 1));
    }
  }
}

TEST_CASE("mptable: vCPU counts that do not fit are refused", "[unit]") {
  CHECK_THROWS_AS(build_mptable(0, 0x9fc00), compactor::error);
  CHECK_THROWS_AS(build_mptable(mptable_max_vcpus + 1, 0x9fc00), compactor::error);
}
