// What a device must provide to be composed into a machine, and what the machine gives it.
//
// A device is a plain class. The machine reads its static description at compile time and
// calls its handlers directly (no virtual calls):
//
//   static constexpr std::string_view name = "uart";          // required, for logs
//
//   static constexpr std::array<port_range, N> ports = {...};  // port I/O, and then:
//   void io_in(std::uint16_t port, std::span<std::uint8_t> data);
//   void io_out(std::uint16_t port, std::span<const std::uint8_t> data);
//
//   static constexpr std::uint64_t mmio_size = 0x1000;       // an MMIO window, and then:
//   static constexpr std::uint64_t mmio_base = ...;          //   (optional: a fixed address;
//                                                             //    otherwise the machine picks)
//   void mmio_read(std::uint64_t offset, std::span<std::uint8_t> data);
//   void mmio_write(std::uint64_t offset, std::span<const std::uint8_t> data);
//
//   static constexpr std::uint32_t irq = 4;                  // a fixed interrupt line, or
//   static constexpr bool wants_irq = true;                  //   one the machine assigns
//
//   void attach(device_context& context, const device_slot& slot);   // optional: VM fd,
//                                                             // memory, IRQ, ending the run
//   std::string cmdline_fragment(const device_slot& slot) const;     // optional
//   void flush();                                             // optional: at the end of a run
//
// `port`/`offset` are the absolute port and the offset inside the MMIO window; `data` is the
// access (1, 2, 4 or 8 bytes). Reads must fill every byte of `data`.
#pragma once

#include <array>
#include <concepts>
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include <fmt/format.h>

#include <compactor/vmm/guest_memory.hpp>
#include <compactor/vmm/run_outcome.hpp>

namespace compactor::vmm {

// A range of x86 I/O ports [first, first + count).
struct port_range {
  std::uint16_t first = 0;
  std::uint16_t count = 0;

  [[nodiscard]] constexpr bool contains(std::uint16_t port) const noexcept {
    return port >= first && port - first < count;
  }
  [[nodiscard]] constexpr bool overlaps(const port_range& other) const noexcept {
    return first < other.first + other.count && other.first < first + count;
  }
};

// Where the machine placed a device: its MMIO window (size 0 when it has none) and its
// interrupt line (-1 when it has none). Computed at compile time from the device list.
struct device_slot {
  std::uint64_t mmio_base = 0;
  std::uint64_t mmio_size = 0;
  int irq = -1;

  [[nodiscard]] constexpr bool contains(std::uint64_t address) const noexcept {
    return mmio_size != 0 && address >= mmio_base && address - mmio_base < mmio_size;
  }
};

// The kernel command-line entry that declares a virtio-mmio device to Linux
// (Documentation/admin-guide/kernel-parameters.txt, virtio_mmio.device=<size>@<base>:<irq>).
[[nodiscard]] inline std::string virtio_mmio_cmdline(const device_slot& slot) {
  return fmt::format("virtio_mmio.device={}K@{:#x}:{}", slot.mmio_size / 1024, slot.mmio_base,
                     slot.irq);
}

// The machine's services for a device. In unit tests a device gets one without a VM: its
// interrupt and end-of-run requests go to functions the test supplies.
class device_context {
public:
  using irq_function = std::function<void(std::uint32_t line, bool level)>;
  using end_function = std::function<void(run_outcome, std::optional<std::uint8_t>, std::string)>;
  using log_function = std::function<void(std::string_view)>;

  device_context(irq_function set_irq_line, end_function end_run, log_function log,
                 int vm_fd = -1, const guest_memory* memory = nullptr)
      : set_irq_line_(std::move(set_irq_line)), end_run_(std::move(end_run)),
        log_(std::move(log)), vm_fd_(vm_fd), memory_(memory) {}

  // The VM's file descriptor, for irqfd and ioeventfd registration; -1 without a VM.
  [[nodiscard]] int vm_fd() const noexcept { return vm_fd_; }

  // Guest RAM, for devices that do DMA (virtio); null without a VM.
  [[nodiscard]] const guest_memory* memory() const noexcept { return memory_; }

  void set_irq_line(std::uint32_t line, bool level) const { set_irq_line_(line, level); }

  // Ends the run of the machine with `outcome` (the first request wins).
  void end_run(run_outcome outcome, std::optional<std::uint8_t> status = std::nullopt,
               std::string detail = {}) const {
    end_run_(outcome, status, std::move(detail));
  }

  void log(std::string_view line) const { log_(line); }

private:
  irq_function set_irq_line_;
  end_function end_run_;
  log_function log_;
  int vm_fd_ = -1;
  const guest_memory* memory_ = nullptr;
};

// The parts of the device contract, one concept each, so that a failed check names the part.
template <typename D>
concept named_device = requires {
  { D::name } -> std::convertible_to<std::string_view>;
};

template <typename D>
concept declares_ports = requires {
  { D::ports.size() } -> std::convertible_to<std::size_t>;
  { D::ports[0] } -> std::convertible_to<port_range>;
};

template <typename D>
concept handles_port_io =
    requires(D& d, std::uint16_t port, std::span<std::uint8_t> in,
             std::span<const std::uint8_t> out) {
      d.io_in(port, in);
      d.io_out(port, out);
    };

template <typename D>
concept declares_mmio = requires {
  { D::mmio_size } -> std::convertible_to<std::uint64_t>;
};

template <typename D>
concept declares_fixed_mmio_base = declares_mmio<D> && requires {
  { D::mmio_base } -> std::convertible_to<std::uint64_t>;
};

template <typename D>
concept handles_mmio = requires(D& d, std::uint64_t offset, std::span<std::uint8_t> in,
                                std::span<const std::uint8_t> out) {
  d.mmio_read(offset, in);
  d.mmio_write(offset, out);
};

template <typename D>
concept declares_fixed_irq = requires {
  { D::irq } -> std::convertible_to<std::uint32_t>;
};

template <typename D>
concept wants_assigned_irq = requires {
  { D::wants_irq } -> std::convertible_to<bool>;
} && D::wants_irq;

template <typename D>
concept attachable = requires(D& d, device_context& context, const device_slot& slot) {
  d.attach(context, slot);
};

template <typename D>
concept contributes_cmdline = requires(const D& d, const device_slot& slot) {
  { d.cmdline_fragment(slot) } -> std::convertible_to<std::string>;
};

template <typename D>
concept flushable = requires(D& d) { d.flush(); };

template <typename D>
concept device = named_device<D> && std::move_constructible<D> &&
                 (declares_ports<D> || declares_mmio<D>) &&
                 (!declares_ports<D> || handles_port_io<D>) &&
                 (!declares_mmio<D> || handles_mmio<D>) &&
                 !(declares_fixed_irq<D> && wants_assigned_irq<D>);

// Checks one device type and says which part of the contract it misses.
template <typename D>
consteval bool check_device() {
  static_assert(named_device<D>,
                "a device needs `static constexpr std::string_view name` (used in logs)");
  static_assert(std::move_constructible<D>, "a device must be move-constructible");
  static_assert(declares_ports<D> || declares_mmio<D>,
                "a device needs I/O ports (`static constexpr std::array<port_range, N> ports`) "
                "or an MMIO window (`static constexpr std::uint64_t mmio_size`)");
  static_assert(!declares_ports<D> || handles_port_io<D>,
                "a device with `ports` needs io_in(std::uint16_t, std::span<std::uint8_t>) and "
                "io_out(std::uint16_t, std::span<const std::uint8_t>)");
  static_assert(!declares_mmio<D> || handles_mmio<D>,
                "a device with `mmio_size` needs mmio_read(std::uint64_t, "
                "std::span<std::uint8_t>) and mmio_write(std::uint64_t, "
                "std::span<const std::uint8_t>)");
  static_assert(!(declares_fixed_irq<D> && wants_assigned_irq<D>),
                "a device declares either a fixed `irq` or `wants_irq`, not both");
  return true;
}

} // namespace compactor::vmm
