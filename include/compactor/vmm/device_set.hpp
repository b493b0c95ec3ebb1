// A machine's devices as one compile-time list: their port ranges, MMIO windows and interrupt
// lines are checked and assigned at compile time, and guest accesses are dispatched over the
// list with direct calls. Accesses no device claims are answered as on a PC with nothing on the
// bus (reads see all ones, writes vanish) and logged once per port or MMIO page.
#pragma once

#include <algorithm>
#include <array>
#include <atomic>
#include <bitset>
#include <cstdint>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_set>
#include <utility>

#include <boost/hana/at.hpp>
#include <boost/hana/for_each.hpp>
#include <boost/hana/range.hpp>
#include <boost/hana/tuple.hpp>
#include <fmt/format.h>

#include <compactor/vmm/device.hpp>
#include <compactor/vmm/x86/layout.hpp>

namespace compactor::vmm {

namespace detail {

template <typename D>
consteval int fixed_irq_of() {
  if constexpr (declares_fixed_irq<D>) {
    return static_cast<int>(D::irq);
  } else {
    return -1;
  }
}

template <typename D>
consteval std::uint64_t mmio_size_of() {
  if constexpr (declares_mmio<D>) {
    return D::mmio_size;
  } else {
    return 0;
  }
}

template <typename D>
consteval std::uint64_t fixed_mmio_base_of() {
  if constexpr (declares_fixed_mmio_base<D>) {
    return D::mmio_base;
  } else {
    return 0;
  }
}

// Interrupt lines the machine hands out, after the ones ISA devices traditionally hold
// (0 timer, 1 keyboard, 2 cascade, 3-4 serial, 8 RTC, 13 FPU). 16-23 reach only the IOAPIC.
inline constexpr std::array<int, 17> assignable_irqs = {5,  6,  7,  9,  10, 11, 12, 14, 15,
                                                        16, 17, 18, 19, 20, 21, 22, 23};

template <typename... Devices>
consteval std::array<device_slot, sizeof...(Devices)> assign_slots() {
  constexpr std::size_t count = sizeof...(Devices);
  constexpr std::array<int, count> fixed_irqs = {fixed_irq_of<Devices>()...};
  constexpr std::array<bool, count> wants_irq = {wants_assigned_irq<Devices>...};
  constexpr std::array<std::uint64_t, count> sizes = {mmio_size_of<Devices>()...};
  constexpr std::array<bool, count> fixed_base = {declares_fixed_mmio_base<Devices>...};
  constexpr std::array<std::uint64_t, count> bases = {fixed_mmio_base_of<Devices>()...};

  std::array<device_slot, count> slots{};
  std::size_t next_irq = 0;
  std::uint64_t next_mmio = x86::device_mmio_base;
  for (std::size_t i = 0; i < count; ++i) {
    slots[i].irq = fixed_irqs[i];
    if (wants_irq[i]) {
      while (next_irq < assignable_irqs.size() &&
             std::find(fixed_irqs.begin(), fixed_irqs.end(), assignable_irqs[next_irq]) !=
                 fixed_irqs.end()) {
        ++next_irq;
      }
      slots[i].irq = next_irq < assignable_irqs.size() ? assignable_irqs[next_irq++] : -2;
    }
    slots[i].mmio_size = sizes[i];
    if (sizes[i] != 0) {
      if (fixed_base[i]) {
        slots[i].mmio_base = bases[i];
      } else {
        const std::uint64_t alignment = std::max<std::uint64_t>(sizes[i], 0x1000);
        // Skip past any fixed window the candidate would overlap, until none does.
        for (bool moved = true; moved;) {
          moved = false;
          next_mmio = (next_mmio + alignment - 1) / alignment * alignment;
          for (std::size_t j = 0; j < count; ++j) {
            if (fixed_base[j] && bases[j] < next_mmio + sizes[i] &&
                next_mmio < bases[j] + sizes[j]) {
              next_mmio = bases[j] + sizes[j];
              moved = true;
            }
          }
        }
        slots[i].mmio_base = next_mmio;
        next_mmio += sizes[i];
      }
    }
  }
  return slots;
}

template <typename D>
consteval auto ports_of() {
  if constexpr (declares_ports<D>) {
    return D::ports;
  } else {
    return std::array<port_range, 0>{};
  }
}

template <typename... Devices>
consteval bool ports_disjoint() {
  std::array<port_range, (ports_of<Devices>().size() + ... + 0)> all{};
  std::size_t n = 0;
  ((
       [&] {
         for (const auto& range : ports_of<Devices>()) {
           all[n++] = range;
         }
       }()),
   ...);
  for (std::size_t i = 0; i < all.size(); ++i) {
    for (std::size_t j = i + 1; j < all.size(); ++j) {
      if (all[i].overlaps(all[j])) {
        return false;
      }
    }
  }
  return true;
}

template <std::size_t N>
consteval bool irqs_assigned(const std::array<device_slot, N>& slots) {
  return std::none_of(slots.begin(), slots.end(), [](const auto& s) { return s.irq == -2; });
}

template <std::size_t N>
consteval bool irqs_distinct(const std::array<device_slot, N>& slots) {
  for (std::size_t i = 0; i < N; ++i) {
    for (std::size_t j = i + 1; j < N; ++j) {
      if (slots[i].irq >= 0 && slots[i].irq == slots[j].irq) {
        return false;
      }
    }
  }
  return true;
}

template <std::size_t N>
consteval bool mmio_disjoint(const std::array<device_slot, N>& slots) {
  for (std::size_t i = 0; i < N; ++i) {
    for (std::size_t j = i + 1; j < N; ++j) {
      const auto& a = slots[i];
      const auto& b = slots[j];
      if (a.mmio_size != 0 && b.mmio_size != 0 && a.mmio_base < b.mmio_base + b.mmio_size &&
          b.mmio_base < a.mmio_base + a.mmio_size) {
        return false;
      }
    }
  }
  return true;
}

template <std::size_t N>
consteval bool mmio_in_hole(const std::array<device_slot, N>& slots) {
  return std::all_of(slots.begin(), slots.end(), [](const auto& s) {
    return s.mmio_size == 0 ||
           (s.mmio_base >= layout::mmio_hole_start && s.mmio_base + s.mmio_size >= s.mmio_base &&
            s.mmio_base + s.mmio_size <= x86::ioapic_address);
  });
}

} // namespace detail

// Counters of guest accesses that no device claimed.
struct unclaimed_access_counts {
  std::uint64_t port_reads = 0;
  std::uint64_t port_writes = 0;
  std::uint64_t mmio_reads = 0;
  std::uint64_t mmio_writes = 0;
};

template <typename... Devices>
class device_set {
  static_assert((check_device<Devices>() && ... && true));

public:
  static constexpr std::size_t size = sizeof...(Devices);
  static constexpr std::array<device_slot, size> slots = detail::assign_slots<Devices...>();

  static_assert(detail::ports_disjoint<Devices...>(),
                "two devices of the machine claim the same I/O port");
  static_assert(detail::irqs_assigned(slots),
                "the machine ran out of interrupt lines for devices that want one");
  static_assert(detail::irqs_distinct(slots),
                "two devices of the machine declare the same fixed interrupt line");
  static_assert(detail::mmio_disjoint(slots), "two devices' MMIO windows overlap");
  static_assert(detail::mmio_in_hole(slots),
                "a device's MMIO window lies outside the 32-bit MMIO hole below the IOAPIC");

  using log_function = std::function<void(std::string_view)>;

  explicit device_set(Devices... devices) : devices_(std::move(devices)...) {}

  device_set(const device_set&) = delete;
  device_set& operator=(const device_set&) = delete;

  template <std::size_t I>
  [[nodiscard]] auto& get() noexcept {
    return boost::hana::at_c<I>(devices_);
  }

  // The device of type D (the first one, when the list holds D twice). Not locked: for set-up
  // before a run and inspection after it; while vCPUs run, use with_device().
  template <typename D>
  [[nodiscard]] D& get() noexcept {
    static_assert((std::is_same_v<D, Devices> || ...), "the machine has no device of this type");
    D* found = nullptr;
    for_each_device([&](auto& device, auto) {
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(device)>, D>) {
        if (found == nullptr) {
          found = &device;
        }
      }
    });
    return *found;
  }

  // Calls `function(device)` for the device of type D while holding its lock, so that a host
  // thread (a terminal feeding the UART, a backend completing a request) does not race the
  // vCPUs.
  template <typename D, typename Function>
  decltype(auto) with_device(Function&& function) {
    static_assert((std::is_same_v<D, Devices> || ...), "the machine has no device of this type");
    std::size_t index = size;
    for_each_device([&](auto& device, auto i) {
      if constexpr (std::is_same_v<std::remove_cvref_t<decltype(device)>, D>) {
        if (index == size) {
          index = i;
        }
      }
    });
    std::lock_guard lock(locks_[index]);
    return std::forward<Function>(function)(get<D>());
  }

  // Gives each device its services and slot; `context` must outlive the set's use.
  void attach(device_context& context) {
    context_ = &context;
    for_each_device([&](auto& device, auto index) {
      if constexpr (attachable<std::remove_cvref_t<decltype(device)>>) {
        device.attach(context, slots[index]);
      }
    });
  }

  // The devices' kernel command-line entries, in list order, separated by spaces.
  [[nodiscard]] std::string cmdline() const {
    std::string line;
    for_each_device([&](const auto& device, auto index) {
      if constexpr (contributes_cmdline<std::remove_cvref_t<decltype(device)>>) {
        const std::string fragment = device.cmdline_fragment(slots[index]);
        if (!fragment.empty()) {
          line += line.empty() ? "" : " ";
          line += fragment;
        }
      }
    });
    return line;
  }

  void flush() {
    for_each_device([&](auto& device, auto) {
      if constexpr (flushable<std::remove_cvref_t<decltype(device)>>) {
        device.flush();
      }
    });
  }

  // A port access of data.size() bytes. Safe to call from several vCPU threads.
  void io(std::uint16_t port, bool is_write, std::span<std::uint8_t> data) {
    bool handled = false;
    for_each_device([&](auto& device, auto index) {
      using device_type = std::remove_cvref_t<decltype(device)>;
      if constexpr (declares_ports<device_type>) {
        if (handled || !claims(device_type::ports, port)) {
          return;
        }
        handled = true;
        std::lock_guard lock(locks_[index]);
        if (is_write) {
          device.io_out(port, std::span<const std::uint8_t>(data));
        } else {
          device.io_in(port, data);
        }
      }
    });
    if (!handled) {
      unclaimed_port(port, is_write, data);
    }
  }

  // An MMIO access at guest-physical `address`.
  void mmio(std::uint64_t address, bool is_write, std::span<std::uint8_t> data) {
    bool handled = false;
    for_each_device([&](auto& device, auto index) {
      using device_type = std::remove_cvref_t<decltype(device)>;
      if constexpr (declares_mmio<device_type>) {
        constexpr device_slot slot = slots[decltype(index)::value];
        if (handled || !slot.contains(address) ||
            data.size() > slot.mmio_size - (address - slot.mmio_base)) {
          return;
        }
        handled = true;
        std::lock_guard lock(locks_[index]);
        if (is_write) {
          device.mmio_write(address - slot.mmio_base, std::span<const std::uint8_t>(data));
        } else {
          device.mmio_read(address - slot.mmio_base, data);
        }
      }
    });
    if (!handled) {
      unclaimed_mmio(address, is_write, data);
    }
  }

  [[nodiscard]] unclaimed_access_counts unclaimed() const {
    std::lock_guard lock(unclaimed_lock_);
    return counts_;
  }

private:
  template <typename Function>
  void for_each_device(Function&& function) {
    boost::hana::for_each(boost::hana::make_range(boost::hana::size_c<0>,
                                                  boost::hana::size_c<size>),
                          [&](auto index) { function(boost::hana::at(devices_, index), index); });
  }

  template <typename Function>
  void for_each_device(Function&& function) const {
    boost::hana::for_each(boost::hana::make_range(boost::hana::size_c<0>,
                                                  boost::hana::size_c<size>),
                          [&](auto index) { function(boost::hana::at(devices_, index), index); });
  }

  template <std::size_t N>
  static constexpr bool claims(const std::array<port_range, N>& ranges, std::uint16_t port) {
    return std::any_of(ranges.begin(), ranges.end(),
                       [port](const port_range& range) { return range.contains(port); });
  }

  void unclaimed_port(std::uint16_t port, bool is_write, std::span<std::uint8_t> data) {
    if (!is_write) {
      std::fill(data.begin(), data.end(), 0xff);
    }
    bool first = false;
    {
      std::lock_guard lock(unclaimed_lock_);
      (is_write ? counts_.port_writes : counts_.port_reads) += 1;
      first = !logged_ports_.test(port);
      logged_ports_.set(port);
    }
    if (first) {
      log(fmt::format("no device at I/O port {:#06x}: guest {} of {} byte(s) {} (logged once "
                      "per port)",
                      port, is_write ? "write" : "read", data.size(),
                      is_write ? "ignored" : "answered with 0xff"));
    }
  }

  void unclaimed_mmio(std::uint64_t address, bool is_write, std::span<std::uint8_t> data) {
    if (!is_write) {
      std::fill(data.begin(), data.end(), 0xff);
    }
    constexpr std::size_t max_logged_pages = 1024;
    bool first = false;
    {
      std::lock_guard lock(unclaimed_lock_);
      (is_write ? counts_.mmio_writes : counts_.mmio_reads) += 1;
      if (logged_pages_.size() < max_logged_pages) {
        first = logged_pages_.insert(address >> 12).second;
      }
    }
    if (first) {
      log(fmt::format("no device or RAM at guest address {:#x}: guest {} of {} byte(s) {} "
                      "(logged once per page)",
                      address, is_write ? "write" : "read", data.size(),
                      is_write ? "ignored" : "answered with 0xff"));
    }
  }

  void log(std::string_view line) const {
    if (context_ != nullptr) {
      context_->log(line);
    }
  }

  boost::hana::tuple<Devices...> devices_;
  std::array<std::mutex, size> locks_;
  device_context* context_ = nullptr;
  mutable std::mutex unclaimed_lock_;
  unclaimed_access_counts counts_;
  std::bitset<65536> logged_ports_;
  std::unordered_set<std::uint64_t> logged_pages_;
};

} // namespace compactor::vmm
