// libFuzzer target: a hostile driver's split virtqueue. The input becomes the queue size, the
// available ring and the contents of guest memory (descriptor tables included); the device
// side pops, maps and returns every chain it is offered. Nothing may crash, hang or touch
// memory outside the guest buffer.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include <compactor/virtio/chain_buffers.hpp>
#include <compactor/virtio/split_queue.hpp>

#include "../virtio/plain_memory.hpp"

using namespace compactor::virtio;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  constexpr std::size_t memory_size = 1 << 16;
  if (size < 2) {
    return 0;
  }
  compactor::testing::plain_memory memory(0, memory_size);

  // The first two bytes pick the queue size and whether EVENT_IDX is on; the rest is copied
  // over guest memory from address 0, where the rings are laid out.
  const auto queue_size = static_cast<std::uint16_t>(1u << (data[0] % 9));
  const bool event_idx = (data[1] & 1) != 0;
  const std::size_t count = std::min(size - 2, memory_size);
  std::memcpy(memory.host_span(0, count).data(), data + 2, count);

  const queue_layout layout{queue_size, 0, 16ULL * queue_size, 0x8000};
  if (check_layout(layout, memory)) {
    return 0;
  }
  split_queue<compactor::testing::plain_memory> queue(memory, layout, event_idx);
  for (int round = 0; round < 2 * queue_size + 2; ++round) {
    auto chain = queue.pop();
    if (!chain) {
      break;
    }
    std::uint32_t written = 0;
    if (chain->ok()) {
      auto buffers = map_chain(memory, *chain);
      std::byte scratch[64] = {};
      buffers.readable.copy_out(0, scratch);
      written = static_cast<std::uint32_t>(buffers.writable.copy_in(0, scratch));
    }
    queue.push_used(chain->head, written);
    static_cast<void>(queue.should_notify());
  }
  return 0;
}
