// The virtio-mmio transport, version 2 (virtio 1.2, 4.2): the register window through which
// the driver discovers a device, negotiates features, sets up queues and is interrupted.
//
// Register accesses come from a vCPU thread; queue notifications may come from an I/O thread
// (ioeventfd). One mutex serialises both, so a device's `process` never runs concurrently
// with a reset or a queue set-up.
#pragma once

#include <array>
#include <atomic>
#include <concepts>
#include <cstdint>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <span>
#include <string_view>

#include <fmt/format.h>

#include <compactor/virtio/guest_memory.hpp>
#include <compactor/virtio/split_queue.hpp>

namespace compactor::virtio {

// Feature bits shared by all devices (virtio 1.2, 6).
inline constexpr unsigned VIRTIO_F_INDIRECT_DESC = 28;
inline constexpr unsigned VIRTIO_F_EVENT_IDX = 29;
inline constexpr unsigned VIRTIO_F_VERSION_1 = 32;

inline constexpr std::uint64_t feature_bit(unsigned bit) { return std::uint64_t{1} << bit; }

// Device status bits (virtio 1.2, 2.1).
inline constexpr std::uint32_t STATUS_ACKNOWLEDGE = 1;
inline constexpr std::uint32_t STATUS_DRIVER = 2;
inline constexpr std::uint32_t STATUS_DRIVER_OK = 4;
inline constexpr std::uint32_t STATUS_FEATURES_OK = 8;
inline constexpr std::uint32_t STATUS_DEVICE_NEEDS_RESET = 64;
inline constexpr std::uint32_t STATUS_FAILED = 128;

// Interrupt status bits (virtio 1.2, 4.2.2).
inline constexpr std::uint32_t INTERRUPT_USED_BUFFER = 1;
inline constexpr std::uint32_t INTERRUPT_CONFIG_CHANGE = 2;

// Register offsets of the MMIO window (virtio 1.2, 4.2.2); names as in the spec.
namespace mmio {
inline constexpr std::uint32_t MagicValue = 0x000;
inline constexpr std::uint32_t Version = 0x004;
inline constexpr std::uint32_t DeviceID = 0x008;
inline constexpr std::uint32_t VendorID = 0x00c;
inline constexpr std::uint32_t DeviceFeatures = 0x010;
inline constexpr std::uint32_t DeviceFeaturesSel = 0x014;
inline constexpr std::uint32_t DriverFeatures = 0x020;
inline constexpr std::uint32_t DriverFeaturesSel = 0x024;
inline constexpr std::uint32_t QueueSel = 0x030;
inline constexpr std::uint32_t QueueNumMax = 0x034;
inline constexpr std::uint32_t QueueNum = 0x038;
inline constexpr std::uint32_t QueueReady = 0x044;
inline constexpr std::uint32_t QueueNotify = 0x050;
inline constexpr std::uint32_t InterruptStatus = 0x060;
inline constexpr std::uint32_t InterruptACK = 0x064;
inline constexpr std::uint32_t Status = 0x070;
inline constexpr std::uint32_t QueueDescLow = 0x080;
inline constexpr std::uint32_t QueueDescHigh = 0x084;
inline constexpr std::uint32_t QueueDriverLow = 0x090;
inline constexpr std::uint32_t QueueDriverHigh = 0x094;
inline constexpr std::uint32_t QueueDeviceLow = 0x0a0;
inline constexpr std::uint32_t QueueDeviceHigh = 0x0a4;
inline constexpr std::uint32_t ConfigGeneration = 0x0fc;
inline constexpr std::uint32_t Config = 0x100;

inline constexpr std::uint32_t magic = 0x74726976; // "virt"
inline constexpr std::uint32_t version = 2;
inline constexpr std::uint32_t vendor = 0x504d4f43; // "COMP"
inline constexpr std::uint64_t window_size = 0x1000;
} // namespace mmio

// What a device behind the transport provides. Queues are handed to `process` only after the
// driver set DRIVER_OK, and only ones that passed validation.
template <typename Device, typename Memory>
concept virtio_device =
    guest_memory<Memory> &&
    requires(Device& device, const Device& const_device, std::uint32_t offset,
             std::span<std::byte> out, std::span<const std::byte> in, std::size_t queue_index,
             split_queue<Memory>& queue, Memory& memory, std::uint64_t features) {
      { Device::device_id } -> std::convertible_to<std::uint32_t>;
      { Device::queue_count } -> std::convertible_to<std::size_t>;
      { Device::name } -> std::convertible_to<std::string_view>;
      { const_device.device_features() } -> std::same_as<std::uint64_t>;
      const_device.read_config(offset, out);
      device.write_config(offset, in);
      device.activate(features);
      // Serves what the driver made available; true when it returned any used buffer.
      { device.process(queue_index, queue, memory) } -> std::same_as<bool>;
      device.reset();
    };

template <typename Device, guest_memory Memory>
class mmio_transport {
  static_assert(virtio_device<Device, Memory>,
                "a virtio device needs static device_id, queue_count and name, and the members "
                "device_features(), read_config(), write_config(), activate(), process() and "
                "reset() (see the virtio_device concept)");

public:
  // `interrupt` is called when the device needs the driver's attention (irqfd or IRQ line).
  mmio_transport(Device& device, Memory& memory, std::function<void()> interrupt)
      : device_(&device), memory_(&memory), interrupt_(std::move(interrupt)) {}

  // A guest read of `data.size()` bytes at `offset` in the window. Registers are 32 bits
  // wide; other widths read as zero (4.2.2: the driver MUST use 32-bit accesses there).
  void read(std::uint64_t offset, std::span<std::byte> data) {
    std::scoped_lock lock(mutex_);
    std::memset(data.data(), 0, data.size());
    if (offset >= mmio::Config) {
      device_->read_config(static_cast<std::uint32_t>(offset - mmio::Config), data);
      return;
    }
    if (data.size() != 4) {
      log_once(offset, "non-32-bit register read");
      return;
    }
    const std::uint32_t value = read_register(static_cast<std::uint32_t>(offset));
    std::memcpy(data.data(), &value, sizeof value);
  }

  void write(std::uint64_t offset, std::span<const std::byte> data) {
    std::unique_lock lock(mutex_);
    if (offset >= mmio::Config) {
      device_->write_config(static_cast<std::uint32_t>(offset - mmio::Config), data);
      return;
    }
    if (data.size() != 4) {
      log_once(offset, "non-32-bit register write");
      return;
    }
    std::uint32_t value = 0;
    std::memcpy(&value, data.data(), sizeof value);
    if (offset == mmio::QueueNotify) {
      lock.unlock();
      notify(value);
      return;
    }
    write_register(static_cast<std::uint32_t>(offset), value);
  }

  // The driver notified queue `index` (a QueueNotify write, directly or through ioeventfd).
  void notify(std::uint32_t index) {
    std::scoped_lock lock(mutex_);
    if ((status_ & STATUS_DRIVER_OK) == 0 || index >= Device::queue_count ||
        !queues_[index].queue) {
      log_once(mmio::QueueNotify, "notification for a queue that is not running");
      return;
    }
    auto& queue = *queues_[index].queue;
    if (device_->process(index, queue, *memory_) && queue.should_notify()) {
      raise(INTERRUPT_USED_BUFFER);
    }
    if (queue.broken()) {
      status_ |= STATUS_DEVICE_NEEDS_RESET;
      raise(INTERRUPT_CONFIG_CHANGE);
    }
  }

  // The backend has input for queue `index` (a tap became readable). Before the driver has
  // set the device up there is nowhere to put it; it waits in the backend, unlogged.
  void backend_input(std::uint32_t index) {
    {
      std::scoped_lock lock(mutex_);
      if ((status_ & STATUS_DRIVER_OK) == 0 || index >= Device::queue_count ||
          !queues_[index].queue) {
        return;
      }
    }
    notify(index);
  }

  // The device changed its configuration space (e.g. a disk resized, a link went down).
  void config_changed() {
    std::scoped_lock lock(mutex_);
    ++config_generation_;
    raise(INTERRUPT_CONFIG_CHANGE);
  }

  [[nodiscard]] std::uint32_t status() const {
    std::scoped_lock lock(mutex_);
    return status_;
  }

  // How many guest accesses were refused or ignored (logged once each kind).
  [[nodiscard]] std::uint64_t rejected_accesses() const noexcept { return rejected_.load(); }

private:
  struct queue_registers {
    queue_layout layout{max_queue_size, 0, 0, 0};
    bool ready = false;
    std::optional<split_queue<Memory>> queue;
  };

  std::uint32_t read_register(std::uint32_t offset) {
    auto& selected = queues_[queue_select_ % Device::queue_count];
    const bool queue_exists = queue_select_ < Device::queue_count;
    switch (offset) {
    case mmio::MagicValue: return mmio::magic;
    case mmio::Version: return mmio::version;
    case mmio::DeviceID: return Device::device_id;
    case mmio::VendorID: return mmio::vendor;
    case mmio::DeviceFeatures: return feature_word(offered_features(), device_features_select_);
    case mmio::QueueNumMax: return queue_exists ? max_queue_size : 0;
    case mmio::QueueReady: return queue_exists && selected.ready ? 1 : 0;
    case mmio::InterruptStatus: return interrupt_status_;
    case mmio::Status: return status_;
    case mmio::ConfigGeneration: return config_generation_;
    default: log_once(offset, "read of a write-only or unknown register"); return 0;
    }
  }

  void write_register(std::uint32_t offset, std::uint32_t value) {
    switch (offset) {
    case mmio::DeviceFeaturesSel: device_features_select_ = value; return;
    case mmio::DriverFeaturesSel: driver_features_select_ = value; return;
    case mmio::DriverFeatures: write_driver_features(value); return;
    case mmio::QueueSel: queue_select_ = value; return;
    case mmio::InterruptACK: interrupt_status_ &= ~value; return;
    case mmio::Status: write_status(value); return;
    default: break;
    }
    write_queue_register(offset, value);
  }

  // 3.1.1: features may be written only before FEATURES_OK.
  void write_driver_features(std::uint32_t value) {
    if ((status_ & STATUS_FEATURES_OK) != 0 || driver_features_select_ > 1) {
      log_once(mmio::DriverFeatures, "feature write after FEATURES_OK or to a word beyond 1");
      return;
    }
    const unsigned shift = 32 * driver_features_select_;
    driver_features_ = (driver_features_ & ~(std::uint64_t{0xffffffff} << shift)) |
                       (std::uint64_t{value} << shift);
  }

  // Queue set-up registers; ignored once the queue is ready or the driver is running, as
  // 4.2.3.2 forbids the driver to change them then.
  void write_queue_register(std::uint32_t offset, std::uint32_t value) {
    if (queue_select_ >= Device::queue_count) {
      log_once(offset, "queue register write for a queue that does not exist");
      return;
    }
    auto& selected = queues_[queue_select_];
    if ((status_ & STATUS_DRIVER_OK) != 0 || (selected.ready && offset != mmio::QueueReady)) {
      log_once(offset, "queue configuration changed while the queue is in use");
      return;
    }
    const auto set_low = [&](std::uint64_t& field) { field = (field & ~0xffffffffULL) | value; };
    const auto set_high = [&](std::uint64_t& field) {
      field = (field & 0xffffffffULL) | (std::uint64_t{value} << 32);
    };
    switch (offset) {
    case mmio::QueueNum: selected.layout.size = static_cast<std::uint16_t>(value); break;
    case mmio::QueueDescLow: set_low(selected.layout.descriptor_table); break;
    case mmio::QueueDescHigh: set_high(selected.layout.descriptor_table); break;
    case mmio::QueueDriverLow: set_low(selected.layout.available_ring); break;
    case mmio::QueueDriverHigh: set_high(selected.layout.available_ring); break;
    case mmio::QueueDeviceLow: set_low(selected.layout.used_ring); break;
    case mmio::QueueDeviceHigh: set_high(selected.layout.used_ring); break;
    case mmio::QueueReady: set_queue_ready(selected, value == 1); break;
    default: log_once(offset, "write to a read-only or unknown register"); break;
    }
    if (offset == mmio::QueueNum && value > max_queue_size) {
      log_once(offset, "queue size above QueueNumMax");
    }
  }

  void set_queue_ready(queue_registers& selected, bool ready) {
    if (!ready) {
      selected.ready = false;
      return;
    }
    if (const auto problem = check_layout(selected.layout, *memory_)) {
      log_once(mmio::QueueReady, *problem);
      return; // QueueReady stays 0, which the driver reads back as a failed set-up
    }
    selected.ready = true;
  }

  // 2.1 and 3.1.1: the driver only adds status bits, in order; writing 0 resets the device.
  void write_status(std::uint32_t value) {
    if (value == 0) {
      reset();
      return;
    }
    if ((value & status_) != status_) {
      log_once(mmio::Status, "status bits cleared without a reset");
      return;
    }
    const std::uint32_t added = value & ~status_;
    if ((added & STATUS_FEATURES_OK) != 0 && !features_acceptable()) {
      value &= ~STATUS_FEATURES_OK; // the driver reads it back and gives up (3.1.1 step 6)
    }
    if ((added & STATUS_DRIVER_OK) != 0) {
      if ((value & STATUS_FEATURES_OK) == 0) {
        log_once(mmio::Status, "DRIVER_OK without FEATURES_OK");
        return;
      }
      start_queues();
      device_->activate(driver_features_);
    }
    status_ = value;
  }

  [[nodiscard]] bool features_acceptable() const {
    const bool subset = (driver_features_ & ~offered_features()) == 0;
    const bool modern = (driver_features_ & feature_bit(VIRTIO_F_VERSION_1)) != 0;
    return subset && modern;
  }

  void start_queues() {
    const bool event_idx = (driver_features_ & feature_bit(VIRTIO_F_EVENT_IDX)) != 0;
    for (auto& registers : queues_) {
      if (registers.ready) {
        registers.queue.emplace(*memory_, registers.layout, event_idx);
      }
    }
  }

  void reset() {
    device_->reset();
    status_ = 0;
    driver_features_ = 0;
    device_features_select_ = 0;
    driver_features_select_ = 0;
    queue_select_ = 0;
    interrupt_status_ = 0;
    for (auto& registers : queues_) {
      registers = queue_registers{};
    }
  }

  [[nodiscard]] std::uint64_t offered_features() const {
    return device_->device_features() | feature_bit(VIRTIO_F_VERSION_1) |
           feature_bit(VIRTIO_F_INDIRECT_DESC) | feature_bit(VIRTIO_F_EVENT_IDX);
  }

  static std::uint32_t feature_word(std::uint64_t features, std::uint32_t select) {
    return select == 0 ? static_cast<std::uint32_t>(features)
           : select == 1 ? static_cast<std::uint32_t>(features >> 32)
                         : 0;
  }

  void raise(std::uint32_t reason) {
    interrupt_status_ |= reason;
    if (interrupt_) {
      interrupt_();
    }
  }

  // A misbehaving driver is logged once per register so that it cannot flood the log.
  void log_once(std::uint64_t offset, std::string_view what) {
    ++rejected_;
    const std::size_t slot = static_cast<std::size_t>(offset / 4) % logged_.size();
    if (!logged_[slot]) {
      logged_[slot] = true;
      fmt::print(stderr, "virtio-{}: {} at register {:#05x}\n", Device::name, what, offset);
    }
  }

  Device* device_;
  Memory* memory_;
  std::function<void()> interrupt_;
  mutable std::mutex mutex_;

  std::uint32_t status_ = 0;
  std::uint64_t driver_features_ = 0;
  std::uint32_t device_features_select_ = 0;
  std::uint32_t driver_features_select_ = 0;
  std::uint32_t queue_select_ = 0;
  std::uint32_t interrupt_status_ = 0;
  std::uint32_t config_generation_ = 0;
  std::array<queue_registers, Device::queue_count> queues_{};
  std::array<bool, 0x40> logged_{};
  std::atomic<std::uint64_t> rejected_{0};
};

} // namespace compactor::virtio
