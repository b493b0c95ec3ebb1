// A virtio device on the virtio-mmio transport, as a device of the VMM's machine
// (include/compactor/vmm/device.hpp): a 4 KiB MMIO window and an interrupt line that the
// machine assigns, and a `virtio_mmio.device=` entry on the kernel command line.
//
// With a VM, queue notifications arrive through ioeventfd and interrupts leave through irqfd,
// both served by an event-loop thread, so device I/O (disk reads, tap writes) never runs on a
// vCPU thread. Without one (unit tests), notifications are served inline and the interrupt
// line is pulsed through the device context.
#pragma once

#include <linux/kvm.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/support/event_loop.hpp>
#include <compactor/support/unique_fd.hpp>
#include <compactor/virtio/mmio_transport.hpp>
#include <compactor/vmm/device.hpp>
#include <compactor/vmm/guest_memory.hpp>

namespace compactor::virtio {

// The VMM's guest memory seen through the virtio guest_memory concept.
class vmm_memory_view {
public:
  explicit vmm_memory_view(const vmm::guest_memory& memory) : memory_(&memory) {}

  [[nodiscard]] bool contains(std::uint64_t address, std::uint64_t length) const {
    return memory_->try_span(address, length).has_value();
  }

  std::span<std::byte> host_span(std::uint64_t address, std::uint64_t length) {
    return std::as_writable_bytes(*memory_->try_span(address, length));
  }

private:
  const vmm::guest_memory* memory_;
};

// A device whose backend has input of its own (a tap's frames) names the descriptor and the
// queue that input is for.
template <typename Device>
concept has_backend_input = requires(const Device& device) {
  { device.input_fd() } -> std::same_as<int>;
  { Device::input_queue } -> std::convertible_to<std::size_t>;
};

// `Slot` tells apart several devices of one type in a machine (two disks, say). A slot built
// without arguments holds no device: the driver finds DeviceID 0 there and leaves it alone
// (4.2.3.1.1), which is how a machine type with room for four disks runs with one.
template <typename Device, unsigned Slot = 0>
class mmio_device {
public:
  static constexpr std::string_view name = Device::name;
  static constexpr std::uint64_t mmio_size = mmio::window_size;
  static constexpr bool wants_irq = true;

  // An empty slot.
  mmio_device() = default;

  template <typename... Arguments>
    requires(sizeof...(Arguments) > 0)
  explicit mmio_device(Arguments&&... arguments)
      : device_(std::make_unique<Device>(std::forward<Arguments>(arguments)...)) {}

  [[nodiscard]] bool present() const noexcept { return device_ != nullptr; }

  void attach(vmm::device_context& context, const vmm::device_slot& slot) {
    if (!present()) {
      return;
    }
    context_ = &context;
    slot_ = slot;
    if (context.memory() == nullptr) {
      throw compactor::error(fmt::format("virtio-{} needs guest memory", name));
    }
    memory_ = std::make_unique<vmm_memory_view>(*context.memory());
    state_ = std::make_unique<attached_state>();
    transport_ = std::make_unique<mmio_transport<Device, vmm_memory_view>>(
        *device_, *memory_, [this] { interrupt(); });

    if (context.vm_fd() >= 0) {
      connect_to_vm(context.vm_fd(), slot);
    }
    if constexpr (has_backend_input<Device>) {
      events().add(device_->input_fd(),
                   [this] { transport_->backend_input(static_cast<std::uint32_t>(Device::input_queue)); });
    }
  }

  void mmio_read(std::uint64_t offset, std::span<std::uint8_t> data) {
    if (present()) {
      transport_->read(offset, std::as_writable_bytes(data));
      return;
    }
    // An empty slot: the magic value and version, then DeviceID 0 and zeros.
    std::fill(data.begin(), data.end(), std::uint8_t{0});
    const std::uint32_t value = offset == mmio::MagicValue ? mmio::magic
                                : offset == mmio::Version  ? mmio::version
                                                           : 0;
    if (data.size() == 4) {
      std::memcpy(data.data(), &value, sizeof value);
    }
  }

  void mmio_write(std::uint64_t offset, std::span<const std::uint8_t> data) {
    if (present()) {
      transport_->write(offset, std::as_bytes(data));
    }
  }

  [[nodiscard]] std::string cmdline_fragment(const vmm::device_slot& slot) const {
    return vmm::virtio_mmio_cmdline(slot);
  }

  // Only for a slot that holds a device.
  [[nodiscard]] Device& device() noexcept { return *device_; }

private:
  // Descriptors and the thread that exist once the device is attached to a machine.
  struct attached_state {
    unique_fd irq_event;
    std::vector<unique_fd> notify_events;
    std::optional<event_loop> loop;
  };

  event_loop& events() {
    if (!state_->loop) {
      state_->loop.emplace();
    }
    return *state_->loop;
  }

  // irqfd for the interrupt line, one ioeventfd per queue on the QueueNotify register
  // (KVM API 4.75 KVM_IRQFD, 4.59 KVM_IOEVENTFD).
  void connect_to_vm(int vm_fd, const vmm::device_slot& slot) {
    state_->irq_event.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
    if (!state_->irq_event) {
      throw_errno("eventfd");
    }
    kvm_irqfd irqfd{};
    irqfd.fd = static_cast<std::uint32_t>(state_->irq_event.get());
    irqfd.gsi = static_cast<std::uint32_t>(slot.irq);
    if (::ioctl(vm_fd, KVM_IRQFD, &irqfd) < 0) {
      state_->irq_event.reset(); // fall back to KVM_IRQ_LINE through the context
    }

    for (std::uint32_t queue = 0; queue < Device::queue_count; ++queue) {
      unique_fd notify(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
      if (!notify) {
        throw_errno("eventfd");
      }
      kvm_ioeventfd ioeventfd{};
      ioeventfd.addr = slot.mmio_base + mmio::QueueNotify;
      ioeventfd.len = 4;
      ioeventfd.datamatch = queue;
      ioeventfd.fd = notify.get();
      ioeventfd.flags = KVM_IOEVENTFD_FLAG_DATAMATCH;
      if (::ioctl(vm_fd, KVM_IOEVENTFD, &ioeventfd) < 0) {
        // Without ioeventfd the write exits to the vCPU thread and is served there.
        context_->log(fmt::format("virtio-{}: KVM_IOEVENTFD failed ({}); notifications run on "
                                  "the vCPU thread",
                                  name, std::strerror(errno)));
        return;
      }
      const int fd = notify.get();
      state_->notify_events.push_back(std::move(notify));
      events().add(fd, [this, fd, queue] {
        std::uint64_t count = 0;
        static_cast<void>(::read(fd, &count, sizeof count));
        transport_->notify(queue);
      });
    }
  }

  // virtio-mmio interrupts are edge-like: the driver reads InterruptStatus and acknowledges,
  // so a pulse on the line is enough (4.2.3.4).
  void interrupt() {
    if (state_->irq_event) {
      const std::uint64_t one = 1;
      static_cast<void>(::write(state_->irq_event.get(), &one, sizeof one));
      return;
    }
    context_->set_irq_line(static_cast<std::uint32_t>(slot_.irq), true);
    context_->set_irq_line(static_cast<std::uint32_t>(slot_.irq), false);
  }

  // Members are destroyed in reverse order: state_ first, whose event loop stops before the
  // transport and the device it calls into go away.
  std::unique_ptr<Device> device_;
  std::unique_ptr<vmm_memory_view> memory_;
  std::unique_ptr<mmio_transport<Device, vmm_memory_view>> transport_;
  std::unique_ptr<attached_state> state_;
  vmm::device_context* context_ = nullptr;
  vmm::device_slot slot_{};
};

} // namespace compactor::virtio
