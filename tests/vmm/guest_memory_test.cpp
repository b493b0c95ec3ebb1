#include <catch2/catch.hpp>

#include <cstdint>
#include <limits>

#include <compactor/vmm/guest_memory.hpp>

using namespace compactor::vmm;

TEST_CASE("guest memory: RAM below the hole, the rest above 4 GiB", "[unit]") {
  const guest_memory small(64 * layout::mib);
  REQUIRE(small.regions().size() == 1);
  CHECK(small.low_ram_end() == 64 * layout::mib);

  const guest_memory large(4 * layout::gib);
  REQUIRE(large.regions().size() == 2);
  CHECK(large.regions()[0].guest_address() == 0);
  CHECK(large.regions()[0].size() == layout::mmio_hole_start);
  CHECK(large.regions()[1].guest_address() == layout::high_ram_start);
  CHECK(large.regions()[1].size() == layout::gib);
  CHECK(large.try_span(layout::mmio_hole_start, 1) == std::nullopt);
  CHECK(large.try_span(layout::high_ram_start + layout::gib - 8, 8).has_value());
  CHECK(large.try_span(layout::high_ram_start + layout::gib - 8, 9) == std::nullopt);

  CHECK_THROWS_AS(guest_memory(layout::mib + 4096), compactor::error);
  CHECK_THROWS_AS(guest_memory(8 * layout::mib + 1), compactor::error);
}

TEST_CASE("guest memory: every range is checked, wrap-around included", "[unit]") {
  const guest_memory memory(4 * layout::mib);
  constexpr auto max = std::numeric_limits<std::uint64_t>::max();

  CHECK(memory.try_span(0, 4 * layout::mib).has_value());
  CHECK(memory.try_span(4 * layout::mib, 0).has_value());
  CHECK_FALSE(memory.try_span(4 * layout::mib, 1).has_value());
  CHECK_FALSE(memory.try_span(4 * layout::mib - 1, 2).has_value());
  CHECK_FALSE(memory.try_span(16, max).has_value());
  CHECK_FALSE(memory.try_span(max, 2).has_value());
  CHECK_FALSE(memory.try_span(max - 1, max).has_value());
  CHECK_THROWS_AS(memory.span(max - 3, 8), guest_address_error);

  try {
    (void)memory.span(0x500000, 0x10);
    FAIL("no error");
  } catch (const guest_address_error& failure) {
    CHECK(failure.address() == 0x500000);
    CHECK(failure.length() == 0x10);
    CHECK_THAT(failure.what(), Catch::Contains("0x500000"));
  }
}

TEST_CASE("guest memory: objects and bytes round-trip at any alignment", "[unit]") {
  const guest_memory memory(4 * layout::mib);
  memory.write_object<std::uint64_t>(0x1003, 0x1122334455667788);
  CHECK(memory.read_object<std::uint64_t>(0x1003) == 0x1122334455667788);
  CHECK(memory.read_object<std::uint8_t>(0x1003) == 0x88);

  const std::uint8_t bytes[] = {1, 2, 3};
  memory.write(0x2000, bytes);
  std::uint8_t back[3] = {};
  memory.read(0x2000, back);
  CHECK(back[2] == 3);
  memory.fill(0x2000, 3, 0xee);
  CHECK(memory.read_object<std::uint8_t>(0x2001) == 0xee);
  CHECK_THROWS_AS(memory.write_object<std::uint32_t>(4 * layout::mib - 2, 1),
                  guest_address_error);
}
