#include <catch2/catch.hpp>

#include <compactor/virtio/split_queue.hpp>

#include "plain_memory.hpp"

using namespace compactor::virtio;
using compactor::testing::plain_memory;
using compactor::testing::ring_driver;

namespace {

constexpr std::uint64_t memory_base = 0;
constexpr std::size_t memory_size = 1 << 20;
constexpr std::uint16_t queue_size = 8;

struct fixture {
  plain_memory memory{memory_base, memory_size};
  ring_driver driver{memory, queue_size};

  split_queue<plain_memory> queue(bool event_idx = false) {
    REQUIRE_FALSE(check_layout(driver.layout(), memory));
    return split_queue<plain_memory>(memory, driver.layout(), event_idx);
  }
};

} // namespace

TEST_CASE("split queue: an empty ring yields nothing", "[unit]") {
  fixture f;
  auto queue = f.queue();
  CHECK_FALSE(queue.pop());
}

TEST_CASE("split queue: a chain keeps its order, readable buffers before writable", "[unit]") {
  fixture f;
  f.driver.set_descriptor(3, {0x20000, 16, VIRTQ_DESC_F_NEXT, 5});
  f.driver.set_descriptor(5, {0x21000, 512, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1});
  f.driver.set_descriptor(1, {0x22000, 1, VIRTQ_DESC_F_WRITE, 0});
  f.driver.publish(3);
  auto queue = f.queue();

  const auto chain = queue.pop();

  REQUIRE(chain);
  REQUIRE(chain->ok());
  CHECK(chain->head == 3);
  REQUIRE(chain->buffers.size() == 3);
  CHECK(chain->buffers[0].address == 0x20000);
  CHECK_FALSE(chain->buffers[0].device_writable);
  CHECK(chain->buffers[1].length == 512);
  CHECK(chain->buffers[2].device_writable);
  CHECK_FALSE(queue.pop());
}

TEST_CASE("split queue: an indirect table is followed", "[unit]") {
  fixture f;
  const std::uint64_t table = 0x30000;
  f.memory.put(table + 0, virtq_desc{0x20000, 16, VIRTQ_DESC_F_NEXT, 1});
  f.memory.put(table + 16, virtq_desc{0x21000, 64, VIRTQ_DESC_F_WRITE, 0});
  f.driver.set_descriptor(0, {table, 32, VIRTQ_DESC_F_INDIRECT, 0});
  f.driver.publish(0);
  auto queue = f.queue();

  const auto chain = queue.pop();

  REQUIRE(chain);
  REQUIRE(chain->ok());
  REQUIRE(chain->buffers.size() == 2);
  CHECK(chain->buffers[1].address == 0x21000);
  CHECK(chain->buffers[1].device_writable);
}

TEST_CASE("split queue: malformed chains are refused with a reason, never followed", "[unit]") {
  fixture f;
  std::string expected;

  SECTION("a loop") {
    f.driver.set_descriptor(0, {0x20000, 8, VIRTQ_DESC_F_NEXT, 1});
    f.driver.set_descriptor(1, {0x20000, 8, VIRTQ_DESC_F_NEXT, 0});
    expected = "loops";
  }
  SECTION("a next index beyond the table") {
    f.driver.set_descriptor(0, {0x20000, 8, VIRTQ_DESC_F_NEXT, queue_size});
    expected = "outside a table";
  }
  SECTION("an indirect table inside an indirect table") {
    f.memory.put(0x30000, virtq_desc{0x31000, 16, VIRTQ_DESC_F_INDIRECT, 0});
    f.driver.set_descriptor(0, {0x30000, 16, VIRTQ_DESC_F_INDIRECT, 0});
    expected = "another indirect table";
  }
  SECTION("an indirect descriptor that is also chained") {
    f.driver.set_descriptor(0, {0x30000, 16, VIRTQ_DESC_F_INDIRECT | VIRTQ_DESC_F_NEXT, 1});
    expected = "both indirect and chained";
  }
  SECTION("an indirect table whose length is not a whole number of descriptors") {
    f.driver.set_descriptor(0, {0x30000, 24, VIRTQ_DESC_F_INDIRECT, 0});
    expected = "indirect table of 24 bytes";
  }
  SECTION("a loop inside an indirect table") {
    f.memory.put(0x30000, virtq_desc{0x20000, 8, VIRTQ_DESC_F_NEXT, 1});
    f.memory.put(0x30010, virtq_desc{0x20000, 8, VIRTQ_DESC_F_NEXT, 0});
    f.driver.set_descriptor(0, {0x30000, 32, VIRTQ_DESC_F_INDIRECT, 0});
    expected = "loops";
  }
  SECTION("a buffer beyond the end of guest memory") {
    f.driver.set_descriptor(0, {memory_size - 8, 16, 0, 0});
    expected = "outside guest memory";
  }
  SECTION("a buffer whose end overflows 64 bits") {
    f.driver.set_descriptor(0, {~std::uint64_t{0} - 7, 16, 0, 0});
    expected = "outside guest memory";
  }
  SECTION("an indirect table outside guest memory") {
    f.driver.set_descriptor(0, {memory_size, 32, VIRTQ_DESC_F_INDIRECT, 0});
    expected = "outside guest memory";
  }
  SECTION("a readable buffer after a writable one") {
    f.driver.set_descriptor(0, {0x20000, 8, VIRTQ_DESC_F_NEXT | VIRTQ_DESC_F_WRITE, 1});
    f.driver.set_descriptor(1, {0x21000, 8, 0, 0});
    expected = "follows a device-writable";
  }
  SECTION("a chain longer than 4 GiB") {
    f.memory.put(0x30000, virtq_desc{0, 0xffff0000u, VIRTQ_DESC_F_NEXT, 1});
    f.memory.put(0x30010, virtq_desc{0, 0xffff0000u, 0, 0});
    f.driver.set_descriptor(0, {0x30000, 32, VIRTQ_DESC_F_INDIRECT, 0});
    // Buffers this large are not in 1 MiB of guest memory, which is refused first.
    expected = "outside guest memory";
  }
  SECTION("a head beyond the queue") {
    f.memory.put<std::uint16_t>(ring_driver::available_at + 4, queue_size + 3);
    f.driver.set_available_index(1);
    expected = "head 11 is outside";
  }

  if (expected.find("head") == std::string::npos) {
    f.driver.publish(0);
  }
  auto queue = f.queue();
  const auto chain = queue.pop();

  REQUIRE(chain);
  CHECK_FALSE(chain->ok());
  CHECK(chain->buffers.empty());
  CHECK_THAT(chain->malformed, Catch::Contains(expected));
  CHECK_FALSE(queue.broken());
}

TEST_CASE("split queue: an available index that jumps past the queue size breaks the queue",
          "[unit]") {
  fixture f;
  f.driver.set_available_index(queue_size + 1);
  auto queue = f.queue();

  const auto chain = queue.pop();

  REQUIRE(chain);
  CHECK_FALSE(chain->ok());
  CHECK(queue.broken());
  CHECK_FALSE(queue.pop());
}

TEST_CASE("split queue: used entries are published with their lengths", "[unit]") {
  fixture f;
  auto queue = f.queue();

  for (std::uint16_t i = 0; i < queue_size + 2; ++i) {
    queue.push_used(i % queue_size, 100u + i);
  }

  CHECK(f.driver.used_index() == queue_size + 2);
  CHECK(f.driver.used(queue_size + 1).id == 1);
  CHECK(f.driver.used(queue_size + 1).length == 100u + queue_size + 1);
}

TEST_CASE("split queue: notifications follow the driver's flag without EVENT_IDX", "[unit]") {
  fixture f;
  auto queue = f.queue(false);

  CHECK_FALSE(queue.should_notify()); // nothing used yet
  queue.push_used(0, 1);
  CHECK(queue.should_notify());

  f.driver.set_available_flags(VIRTQ_AVAIL_F_NO_INTERRUPT);
  queue.push_used(1, 1);
  CHECK_FALSE(queue.should_notify());
}

TEST_CASE("split queue: with EVENT_IDX the driver's used_event decides, and avail_event "
          "follows the device",
          "[unit]") {
  fixture f;
  f.driver.set_descriptor(0, {0x20000, 8, 0, 0});
  f.driver.publish(0);
  f.driver.publish(0);
  auto queue = f.queue(true);

  REQUIRE(queue.pop());
  CHECK(f.driver.avail_event() == 1);
  REQUIRE(queue.pop());
  CHECK(f.driver.avail_event() == 2);

  f.driver.set_used_event(1); // interrupt me once the used index passes 1
  queue.push_used(0, 8);      // used index 1
  CHECK_FALSE(queue.should_notify());
  queue.push_used(0, 8); // used index 2
  CHECK(queue.should_notify());
  queue.push_used(0, 8); // used index 3: the driver has not moved used_event
  CHECK_FALSE(queue.should_notify());
}

TEST_CASE("queue layout: size, alignment and bounds are validated", "[unit]") {
  plain_memory memory{0, 1 << 20};
  queue_layout layout{8, 0x1000, 0x2000, 0x3000};
  CHECK_FALSE(check_layout(layout, memory));

  auto with = [&](auto change) {
    auto changed = layout;
    change(changed);
    return check_layout(changed, memory);
  };
  CHECK(with([](auto& l) { l.size = 0; }));
  CHECK(with([](auto& l) { l.size = 6; }));
  CHECK(with([](auto& l) { l.size = max_queue_size * 2; }));
  CHECK(with([](auto& l) { l.descriptor_table = 0x1008; }));
  CHECK(with([](auto& l) { l.available_ring = 0x2001; }));
  CHECK(with([](auto& l) { l.used_ring = 0x3002; }));
  CHECK(with([](auto& l) { l.used_ring = (1 << 20) - 8; }));
  CHECK_THAT(*with([](auto& l) { l.size = 6; }), Catch::Contains("power of two"));
}
