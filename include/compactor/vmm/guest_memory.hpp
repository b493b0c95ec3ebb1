// Guest RAM: anonymous host mappings laid out as on a PC, with every guest-supplied address
// checked before the host touches it.
//
// Layout: RAM starts at guest-physical 0 and runs up to the 32-bit MMIO hole (3 GiB to 4 GiB:
// device windows, IOAPIC, LAPIC); what does not fit below the hole continues at 4 GiB.
#pragma once

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <type_traits>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>

namespace compactor::vmm {

namespace layout {
inline constexpr std::uint64_t kib = 1024;
inline constexpr std::uint64_t mib = 1024 * kib;
inline constexpr std::uint64_t gib = 1024 * mib;

inline constexpr std::uint64_t mmio_hole_start = 3 * gib;
inline constexpr std::uint64_t mmio_hole_end = 4 * gib;
inline constexpr std::uint64_t high_ram_start = 4 * gib;
} // namespace layout

// A guest access that falls outside guest RAM. Device code catches it and treats the request
// as a guest error; it never reaches the host as a crash.
class guest_address_error : public error {
public:
  guest_address_error(std::uint64_t address, std::uint64_t length)
      : error(fmt::format("guest range [{:#x}, +{:#x}) is not guest RAM", address, length)),
        address_(address), length_(length) {}

  [[nodiscard]] std::uint64_t address() const noexcept { return address_; }
  [[nodiscard]] std::uint64_t length() const noexcept { return length_; }

private:
  std::uint64_t address_;
  std::uint64_t length_;
};

// One contiguous range of guest-physical RAM backed by one host mapping.
class memory_region {
public:
  memory_region(std::uint64_t guest_address, std::uint64_t size)
      : guest_address_(guest_address), size_(size) {
    void* host = ::mmap(nullptr, size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (host == MAP_FAILED) {
      throw_errno(fmt::format("mmap of {} MiB of guest RAM", size / layout::mib));
    }
    host_ = static_cast<std::uint8_t*>(host);
    // A child process (a helper the VMM forks, or one the library user forks) never needs
    // guest RAM; without this, fork would copy the page tables of every page the guest touched.
    if (::madvise(host_, size, MADV_DONTFORK) != 0) {
      const int saved = errno;
      ::munmap(host_, size);
      errno = saved;
      throw_errno("madvise(MADV_DONTFORK) on guest RAM");
    }
  }
  memory_region(memory_region&& other) noexcept
      : guest_address_(other.guest_address_), size_(other.size_),
        host_(std::exchange(other.host_, nullptr)) {}
  memory_region& operator=(memory_region&&) = delete;
  memory_region(const memory_region&) = delete;
  memory_region& operator=(const memory_region&) = delete;
  ~memory_region() {
    if (host_ != nullptr) {
      ::munmap(host_, size_);
    }
  }

  [[nodiscard]] std::uint64_t guest_address() const noexcept { return guest_address_; }
  [[nodiscard]] std::uint64_t size() const noexcept { return size_; }
  [[nodiscard]] std::uint64_t guest_end() const noexcept { return guest_address_ + size_; }
  [[nodiscard]] std::uint8_t* host() const noexcept { return host_; }

  // Whether [address, address + length) lies inside this region. Written so that no sum can
  // wrap: a guest may hand us any 64-bit address and length.
  [[nodiscard]] bool contains(std::uint64_t address, std::uint64_t length) const noexcept {
    if (address < guest_address_) {
      return false;
    }
    const std::uint64_t offset = address - guest_address_;
    return offset <= size_ && length <= size_ - offset;
  }

private:
  std::uint64_t guest_address_;
  std::uint64_t size_;
  std::uint8_t* host_ = nullptr;
};

class guest_memory {
public:
  // Lays out `ram_size` bytes of RAM (a multiple of 4 KiB, at least 2 MiB) around
  // the 32-bit MMIO hole.
  explicit guest_memory(std::uint64_t ram_size) : ram_size_(ram_size) {
    if (ram_size < 2 * layout::mib || ram_size % (4 * layout::kib) != 0) {
      throw error(fmt::format("guest RAM size {:#x} must be a multiple of 4 KiB and at least "
                              "2 MiB",
                              ram_size));
    }
    const auto low = std::min(ram_size, layout::mmio_hole_start);
    regions_.emplace_back(0, low);
    if (ram_size > low) {
      regions_.emplace_back(layout::high_ram_start, ram_size - low);
    }
  }

  [[nodiscard]] const std::vector<memory_region>& regions() const noexcept { return regions_; }
  [[nodiscard]] std::uint64_t ram_size() const noexcept { return ram_size_; }

  // The end of RAM below the MMIO hole.
  [[nodiscard]] std::uint64_t low_ram_end() const noexcept { return regions_.front().guest_end(); }

  // Host bytes for a guest range that lies wholly inside one region, or nothing.
  [[nodiscard]] std::optional<std::span<std::uint8_t>> try_span(std::uint64_t address,
                                                                std::uint64_t length) const {
    for (const auto& region : regions_) {
      if (region.contains(address, length)) {
        return std::span<std::uint8_t>(region.host() + (address - region.guest_address()),
                                       static_cast<std::size_t>(length));
      }
    }
    return std::nullopt;
  }

  // Host bytes for a guest range; throws guest_address_error when it is not RAM.
  [[nodiscard]] std::span<std::uint8_t> span(std::uint64_t address, std::uint64_t length) const {
    if (auto bytes = try_span(address, length)) {
      return *bytes;
    }
    throw guest_address_error(address, length);
  }

  void write(std::uint64_t address, std::span<const std::uint8_t> bytes) const {
    auto target = span(address, bytes.size());
    std::copy(bytes.begin(), bytes.end(), target.begin());
  }

  void write(std::uint64_t address, std::span<const std::byte> bytes) const {
    write(address, std::span<const std::uint8_t>(
                       reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size()));
  }

  void read(std::uint64_t address, std::span<std::uint8_t> bytes) const {
    auto source = span(address, bytes.size());
    std::copy(source.begin(), source.end(), bytes.begin());
  }

  void fill(std::uint64_t address, std::uint64_t length, std::uint8_t value) const {
    auto target = span(address, length);
    std::fill(target.begin(), target.end(), value);
  }

  // Trivially copyable objects, read and written byte-wise (guest addresses need no
  // alignment).
  template <typename T>
    requires std::is_trivially_copyable_v<T>
  [[nodiscard]] T read_object(std::uint64_t address) const {
    T value;
    std::memcpy(&value, span(address, sizeof(T)).data(), sizeof(T));
    return value;
  }

  template <typename T>
    requires std::is_trivially_copyable_v<T>
  void write_object(std::uint64_t address, const T& value) const {
    std::memcpy(span(address, sizeof(T)).data(), &value, sizeof(T));
  }

private:
  std::uint64_t ram_size_;
  std::vector<memory_region> regions_;
};

} // namespace compactor::vmm
