// The PC's CMOS real-time clock (Motorola MC146818A) on ports 0x70 (index) and 0x71 (data):
// the wall-clock time and 114 bytes of battery-backed RAM. Linux reads the time from it at boot
// when no paravirtual clock gives one, and `hwclock` reads and sets it.
//
// The clock shows the host's UTC time plus an offset that the guest changes by writing the
// time registers. Status register B selects BCD or binary values and a 12- or 24-hour clock,
// as on the chip. No interrupt is raised (periodic, alarm and update-ended interrupts need IRQ
// 8, which nothing in a Compactor guest uses), and the update-in-progress flag always reads 0:
// a read never tears, because every register is computed from one reading of the host clock.
#pragma once

#include <array>
#include <cstdint>
#include <ctime>
#include <functional>
#include <optional>
#include <span>
#include <string_view>
#include <utility>

#include <compactor/vmm/device.hpp>

namespace compactor::devices {

namespace cmos_registers {
inline constexpr std::uint16_t index_port = 0x70; // bit 7 masks NMIs; bits 0-6 select
inline constexpr std::uint16_t data_port = 0x71;

inline constexpr std::uint8_t seconds = 0x00;
inline constexpr std::uint8_t minutes = 0x02;
inline constexpr std::uint8_t hours = 0x04;
inline constexpr std::uint8_t day_of_week = 0x06; // 1 = Sunday
inline constexpr std::uint8_t day_of_month = 0x07;
inline constexpr std::uint8_t month = 0x08;
inline constexpr std::uint8_t year = 0x09;        // 0-99
inline constexpr std::uint8_t status_a = 0x0a;
inline constexpr std::uint8_t status_b = 0x0b;
inline constexpr std::uint8_t status_c = 0x0c;
inline constexpr std::uint8_t status_d = 0x0d;
inline constexpr std::uint8_t century = 0x32;     // the PC convention (ACPI FADT "century")
inline constexpr std::uint8_t register_count = 0x80;

// Status A: 32.768 kHz time base, 1024 Hz periodic rate; bit 7 (update in progress) stays 0.
inline constexpr std::uint8_t status_a_default = 0x26;
inline constexpr std::uint8_t status_a_writable = 0x7f;
inline constexpr std::uint8_t status_b_set = 0x80;       // clock halted for setting
inline constexpr std::uint8_t status_b_binary = 0x04;    // DM: binary, not BCD
inline constexpr std::uint8_t status_b_24_hour = 0x02;
inline constexpr std::uint8_t status_d_valid = 0x80;     // VRT: the battery is good
inline constexpr std::uint8_t hour_pm = 0x80;            // in 12-hour mode
} // namespace cmos_registers

class cmos_rtc {
public:
  static constexpr std::string_view name = "cmos-rtc";
  static constexpr std::array<vmm::port_range, 1> ports = {
      vmm::port_range{cmos_registers::index_port, 2}};

  // Seconds since the epoch, UTC. Tests pass a fixed clock.
  using clock = std::function<std::int64_t()>;

  cmos_rtc() : cmos_rtc(host_clock) {}
  explicit cmos_rtc(clock now) : now_(std::move(now)) {
    using namespace cmos_registers;
    ram_[status_a] = status_a_default;
    ram_[status_b] = status_b_24_hour;
  }

  void io_in(std::uint16_t port, std::span<std::uint8_t> data) {
    for (auto& byte : data) {
      byte = 0xff;
    }
    if (!data.empty() && port == cmos_registers::data_port) {
      data[0] = read(selected_);
    } else if (!data.empty()) {
      data[0] = static_cast<std::uint8_t>(selected_ | (nmi_masked_ ? 0x80 : 0));
    }
  }

  void io_out(std::uint16_t port, std::span<const std::uint8_t> data) {
    if (data.empty()) {
      return;
    }
    if (port == cmos_registers::index_port) {
      selected_ = data[0] & 0x7f;
      nmi_masked_ = (data[0] & 0x80) != 0;
    } else {
      write(selected_, data[0]);
    }
  }

  [[nodiscard]] std::uint8_t read(std::uint8_t index) const {
    using namespace cmos_registers;
    if (is_clock_register(index)) {
      return time_register(index, broken_down(shown_time()));
    }
    switch (index) {
    case status_c:
      return 0; // no interrupt flags: no interrupt is ever raised
    case status_d:
      return status_d_valid;
    default:
      return ram_[index];
    }
  }

  void write(std::uint8_t index, std::uint8_t value) {
    using namespace cmos_registers;
    if (is_clock_register(index)) {
      set_time_register(index, value);
      return;
    }
    switch (index) {
    case status_a:
      ram_[index] = value & status_a_writable;
      return;
    case status_b:
      set_status_b(value);
      return;
    case status_c:
    case status_d:
      return; // read-only on the chip
    default:
      ram_[index] = value;
    }
  }

  // Seconds since the epoch that the guest's clock shows.
  [[nodiscard]] std::int64_t shown_time() const {
    return halted_at_ ? *halted_at_ : now_() + offset_;
  }

private:
  static constexpr bool is_clock_register(std::uint8_t index) {
    using namespace cmos_registers;
    return index == seconds || index == minutes || index == hours || index == day_of_week ||
           index == day_of_month || index == month || index == year || index == century;
  }

  static std::int64_t host_clock() { return static_cast<std::int64_t>(std::time(nullptr)); }

  static std::tm broken_down(std::int64_t seconds_since_epoch) {
    const auto value = static_cast<std::time_t>(seconds_since_epoch);
    std::tm fields{};
    ::gmtime_r(&value, &fields);
    return fields;
  }

  [[nodiscard]] bool binary() const {
    return (ram_[cmos_registers::status_b] & cmos_registers::status_b_binary) != 0;
  }
  [[nodiscard]] bool twenty_four_hour() const {
    return (ram_[cmos_registers::status_b] & cmos_registers::status_b_24_hour) != 0;
  }

  [[nodiscard]] std::uint8_t encode(int value) const {
    const auto v = static_cast<std::uint8_t>(value);
    return binary() ? v : static_cast<std::uint8_t>(((v / 10) << 4) | (v % 10));
  }
  [[nodiscard]] int decode(std::uint8_t value) const {
    return binary() ? value : (value >> 4) * 10 + (value & 0x0f);
  }

  [[nodiscard]] std::uint8_t time_register(std::uint8_t index, const std::tm& time) const {
    using namespace cmos_registers;
    switch (index) {
    case seconds: return encode(time.tm_sec);
    case minutes: return encode(time.tm_min);
    case hours: return encode_hour(time.tm_hour);
    case day_of_week: return encode(time.tm_wday + 1);
    case day_of_month: return encode(time.tm_mday);
    case month: return encode(time.tm_mon + 1);
    case year: return encode((time.tm_year + 1900) % 100);
    default: return encode((time.tm_year + 1900) / 100);
    }
  }

  [[nodiscard]] std::uint8_t encode_hour(int hour) const {
    if (twenty_four_hour()) {
      return encode(hour);
    }
    const int twelve = hour % 12 == 0 ? 12 : hour % 12;
    return static_cast<std::uint8_t>(encode(twelve) | (hour >= 12 ? cmos_registers::hour_pm : 0));
  }

  [[nodiscard]] int decode_hour(std::uint8_t value) const {
    if (twenty_four_hour()) {
      return decode(value);
    }
    const int twelve = decode(value & 0x7f) % 12;
    return (value & cmos_registers::hour_pm) != 0 ? twelve + 12 : twelve;
  }

  // A write to one field moves the clock so that the field reads back as written; the other
  // fields keep their values (as far as the calendar allows: 31 February becomes 3 March).
  void set_time_register(std::uint8_t index, std::uint8_t value) {
    using namespace cmos_registers;
    std::tm time = broken_down(shown_time());
    const int year_value = time.tm_year + 1900;
    switch (index) {
    case seconds: time.tm_sec = decode(value); break;
    case minutes: time.tm_min = decode(value); break;
    case hours: time.tm_hour = decode_hour(value); break;
    case day_of_week: return; // follows from the date
    case day_of_month: time.tm_mday = decode(value); break;
    case month: time.tm_mon = decode(value) - 1; break;
    case year: time.tm_year = year_value / 100 * 100 + decode(value) - 1900; break;
    default: time.tm_year = decode(value) * 100 + year_value % 100 - 1900; break;
    }
    const std::int64_t wanted = static_cast<std::int64_t>(::timegm(&time));
    if (halted_at_) {
      halted_at_ = wanted;
    } else {
      offset_ = wanted - now_();
    }
  }

  // Bit 7 (SET) halts the clock while the guest writes a new time; clearing it restarts it.
  void set_status_b(std::uint8_t value) {
    const bool halt = (value & cmos_registers::status_b_set) != 0;
    if (halt && !halted_at_) {
      halted_at_ = shown_time();
    } else if (!halt && halted_at_) {
      offset_ = *halted_at_ - now_();
      halted_at_.reset();
    }
    ram_[cmos_registers::status_b] = value;
  }

  clock now_;
  std::int64_t offset_ = 0;
  std::optional<std::int64_t> halted_at_;
  std::uint8_t selected_ = 0;
  bool nmi_masked_ = false;
  std::array<std::uint8_t, cmos_registers::register_count> ram_{};
};

} // namespace compactor::devices
