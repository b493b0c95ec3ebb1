// Owned handles for the three levels of the KVM API: the /dev/kvm system handle, a VM and a
// vCPU. Every ioctl that fails throws std::system_error naming the ioctl; a missing capability
// is a compactor::error that names it.
//
// The API is described in the kernel's Documentation/virt/kvm/api.rst; section numbers below
// refer to it.
#pragma once

#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include <compactor/support/error.hpp>
#include <compactor/support/unique_fd.hpp>

namespace compactor::vmm {

namespace detail {

// Issues an ioctl that returns a non-negative value on success; throws naming `name`.
template <typename Argument>
int kvm_ioctl(int fd, unsigned long request, Argument argument, std::string_view name) {
  const int result = ::ioctl(fd, request, argument);
  if (result < 0) {
    throw_errno(name);
  }
  return result;
}

#define COMPACTOR_KVM_IOCTL(fd, request, argument)                                              \
  ::compactor::vmm::detail::kvm_ioctl((fd), (request), (argument), #request)

// The fixed parts of KVM's variable-length structures, laid out as the kernel (C) sees them.
// In C++, <linux/kvm.h> declares their trailing arrays with __DECLARE_FLEX_ARRAY, which adds an
// empty struct member: C++ gives it a size, so sizeof(kvm_cpuid2) is 12 instead of 8, the
// entries move, and the ioctl numbers (which encode the size) no longer match the kernel's.
struct cpuid2_header {
  std::uint32_t nent;
  std::uint32_t padding;
};
struct msrs_header {
  std::uint32_t nmsrs;
  std::uint32_t pad;
};
struct msr_list_header {
  std::uint32_t nmsrs;
};
inline constexpr unsigned long kvm_get_supported_cpuid = _IOWR(KVMIO, 0x05, cpuid2_header);
inline constexpr unsigned long kvm_set_cpuid2 = _IOW(KVMIO, 0x90, cpuid2_header);
inline constexpr unsigned long kvm_get_msr_index_list = _IOWR(KVMIO, 0x02, msr_list_header);
inline constexpr unsigned long kvm_set_msrs = _IOW(KVMIO, 0x89, msrs_header);

// A variable-length KVM structure: a header followed by `count` entries, allocated as one
// block as the ioctls expect.
template <typename Header, typename Entry>
class flexible_array {
public:
  explicit flexible_array(std::size_t count)
      : storage_(std::make_unique<std::byte[]>(sizeof(Header) + count * sizeof(Entry))),
        capacity_(count) {}

  [[nodiscard]] Header* header() noexcept { return reinterpret_cast<Header*>(storage_.get()); }
  [[nodiscard]] const Header* header() const noexcept {
    return reinterpret_cast<const Header*>(storage_.get());
  }
  [[nodiscard]] Entry* entries() noexcept {
    return reinterpret_cast<Entry*>(storage_.get() + sizeof(Header));
  }
  [[nodiscard]] const Entry* entries() const noexcept {
    return reinterpret_cast<const Entry*>(storage_.get() + sizeof(Header));
  }
  [[nodiscard]] std::size_t capacity() const noexcept { return capacity_; }

private:
  std::unique_ptr<std::byte[]> storage_;
  std::size_t capacity_;
};

} // namespace detail

// The CPUID table a vCPU sees (api.rst 4.46 KVM_GET_SUPPORTED_CPUID, 4.73 KVM_SET_CPUID2).
using cpuid_table = std::vector<kvm_cpuid_entry2>;

// A virtual CPU (api.rst 4.7 KVM_CREATE_VCPU) and its shared kvm_run page (4.10 KVM_RUN).
class vcpu {
public:
  vcpu(unique_fd fd, unsigned index, std::size_t run_size) : fd_(std::move(fd)), index_(index) {
    void* run = ::mmap(nullptr, run_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd_.get(), 0);
    if (run == MAP_FAILED) {
      throw_errno("mmap of the vCPU's kvm_run area");
    }
    run_ = static_cast<kvm_run*>(run);
    run_size_ = run_size;
  }
  vcpu(vcpu&& other) noexcept
      : fd_(std::move(other.fd_)), index_(other.index_),
        run_(std::exchange(other.run_, nullptr)), run_size_(other.run_size_) {}
  vcpu& operator=(vcpu&&) = delete;
  vcpu(const vcpu&) = delete;
  vcpu& operator=(const vcpu&) = delete;
  ~vcpu() {
    if (run_ != nullptr) {
      ::munmap(run_, run_size_);
    }
  }

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }
  [[nodiscard]] unsigned index() const noexcept { return index_; }
  [[nodiscard]] kvm_run& run_area() noexcept { return *run_; }

  // Enters the guest. Returns false when the call was interrupted by a signal (EINTR) or
  // refused because immediate_exit was set (EINTR as well); any other failure throws.
  bool run() {
    if (::ioctl(fd_.get(), KVM_RUN, 0) < 0) {
      if (errno == EINTR || errno == EAGAIN) {
        return false;
      }
      throw_errno("KVM_RUN");
    }
    return true;
  }

  [[nodiscard]] kvm_regs regs() const {
    kvm_regs value{};
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_GET_REGS, &value);
    return value;
  }
  void set_regs(const kvm_regs& value) { COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_REGS, &value); }

  [[nodiscard]] kvm_sregs sregs() const {
    kvm_sregs value{};
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_GET_SREGS, &value);
    return value;
  }
  void set_sregs(const kvm_sregs& value) {
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_SREGS, &value);
  }

  void set_fpu(const kvm_fpu& value) { COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_FPU, &value); }

  [[nodiscard]] kvm_lapic_state lapic() const {
    kvm_lapic_state value{};
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_GET_LAPIC, &value);
    return value;
  }
  void set_lapic(const kvm_lapic_state& value) {
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_LAPIC, &value);
  }

  // KVM_MP_STATE_RUNNABLE, _HALTED, _UNINITIALIZED (waiting for INIT/SIPI), ... (api.rst 4.38).
  [[nodiscard]] std::uint32_t mp_state() const {
    kvm_mp_state value{};
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_GET_MP_STATE, &value);
    return value.mp_state;
  }
  void set_mp_state(std::uint32_t state) {
    kvm_mp_state value{state};
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_MP_STATE, &value);
  }

  void set_cpuid(const cpuid_table& table) {
    detail::flexible_array<detail::cpuid2_header, kvm_cpuid_entry2> block(table.size());
    block.header()->nent = static_cast<std::uint32_t>(table.size());
    block.header()->padding = 0;
    for (std::size_t i = 0; i < table.size(); ++i) {
      block.entries()[i] = table[i];
    }
    detail::kvm_ioctl(fd_.get(), detail::kvm_set_cpuid2, block.header(), "KVM_SET_CPUID2");
  }

  // Sets model-specific registers (api.rst 4.19 KVM_SET_MSRS). KVM stops at the first MSR it
  // refuses and returns how many it set; that MSR is named in the error.
  void set_msrs(const std::vector<kvm_msr_entry>& msrs) {
    detail::flexible_array<detail::msrs_header, kvm_msr_entry> block(msrs.size());
    block.header()->nmsrs = static_cast<std::uint32_t>(msrs.size());
    block.header()->pad = 0;
    for (std::size_t i = 0; i < msrs.size(); ++i) {
      block.entries()[i] = msrs[i];
    }
    const int set =
        detail::kvm_ioctl(fd_.get(), detail::kvm_set_msrs, block.header(), "KVM_SET_MSRS");
    if (static_cast<std::size_t>(set) != msrs.size()) {
      throw error(fmt::format("KVM_SET_MSRS refused MSR {:#x} on vCPU {}", msrs[set].index,
                              index_));
    }
  }

private:
  unique_fd fd_;
  unsigned index_ = 0;
  kvm_run* run_ = nullptr;
  std::size_t run_size_ = 0;
};

// A virtual machine (api.rst 4.2 KVM_CREATE_VM). Owns its memory slots' registration, the
// in-kernel interrupt controllers and PIT; guest memory itself belongs to guest_memory.
class vm {
public:
  vm(unique_fd fd, std::size_t run_size) : fd_(std::move(fd)), run_size_(run_size) {}

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

  // Whether the VM supports `capability` (api.rst 4.4 KVM_CHECK_EXTENSION on the VM fd).
  [[nodiscard]] int check_extension(long capability) const {
    return COMPACTOR_KVM_IOCTL(fd_.get(), KVM_CHECK_EXTENSION, capability);
  }

  // Throws a readable error when the capability is missing.
  void require(long capability, std::string_view name) const {
    if (check_extension(capability) <= 0) {
      throw error(fmt::format("KVM on this host lacks the capability {} that the VMM needs",
                              name));
    }
  }

  void set_user_memory_region(std::uint32_t slot, std::uint64_t guest_address, std::uint64_t size,
                              void* host_address) {
    kvm_userspace_memory_region region{};
    region.slot = slot;
    region.guest_phys_addr = guest_address;
    region.memory_size = size;
    region.userspace_addr = reinterpret_cast<std::uint64_t>(host_address);
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_USER_MEMORY_REGION, &region);
  }

  // The TSS needs three pages inside the guest-physical space on Intel hosts (api.rst 4.48);
  // they are placed in the MMIO hole, away from RAM.
  void set_tss_address(std::uint64_t address) {
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_TSS_ADDR, static_cast<unsigned long>(address));
  }

  void set_identity_map_address(std::uint64_t address) {
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_SET_IDENTITY_MAP_ADDR, &address);
  }

  // The in-kernel 8259 PICs and IOAPIC (api.rst 4.24), and the i8254 PIT (4.71).
  void create_irqchip() { COMPACTOR_KVM_IOCTL(fd_.get(), KVM_CREATE_IRQCHIP, 0); }
  void create_pit() {
    kvm_pit_config config{};
    config.flags = KVM_PIT_SPEAKER_DUMMY;
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_CREATE_PIT2, &config);
  }

  // Drives an interrupt line of the in-kernel irqchip (api.rst 4.25 KVM_IRQ_LINE); lines 0-15
  // reach both the PIC and the IOAPIC.
  void set_irq_line(std::uint32_t line, bool level) {
    kvm_irq_level value{};
    value.irq = line;
    value.level = level ? 1 : 0;
    COMPACTOR_KVM_IOCTL(fd_.get(), KVM_IRQ_LINE, &value);
  }

  [[nodiscard]] vcpu create_vcpu(unsigned index) {
    unique_fd fd(
        COMPACTOR_KVM_IOCTL(fd_.get(), KVM_CREATE_VCPU, static_cast<unsigned long>(index)));
    return vcpu(std::move(fd), index, run_size_);
  }

private:
  unique_fd fd_;
  std::size_t run_size_ = 0;
};

// The /dev/kvm handle: checks the API version and creates VMs.
class kvm_system {
public:
  explicit kvm_system(const std::string& device_path = "/dev/kvm")
      : fd_(::open(device_path.c_str(), O_RDWR | O_CLOEXEC)) {
    if (!fd_) {
      throw_errno(fmt::format("open {}", device_path));
    }
    const int version = COMPACTOR_KVM_IOCTL(fd_.get(), KVM_GET_API_VERSION, 0);
    if (version != KVM_API_VERSION) {
      throw error(fmt::format("{} speaks KVM API version {}, this VMM needs {}", device_path,
                              version, KVM_API_VERSION));
    }
    run_size_ = static_cast<std::size_t>(
        COMPACTOR_KVM_IOCTL(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0));
  }

  [[nodiscard]] int fd() const noexcept { return fd_.get(); }

  [[nodiscard]] int check_extension(long capability) const {
    return COMPACTOR_KVM_IOCTL(fd_.get(), KVM_CHECK_EXTENSION, capability);
  }

  void require(long capability, std::string_view name) const {
    if (check_extension(capability) <= 0) {
      throw error(fmt::format("KVM on this host lacks the capability {} that the VMM needs",
                              name));
    }
  }

  [[nodiscard]] vm create_vm() const {
    unique_fd fd(COMPACTOR_KVM_IOCTL(fd_.get(), KVM_CREATE_VM, 0));
    return vm(std::move(fd), run_size_);
  }

  // The CPUID leaves KVM can offer a guest (api.rst 4.46); the table grows until it fits.
  [[nodiscard]] cpuid_table supported_cpuid() const {
    for (std::size_t capacity = 64; capacity <= 4096; capacity *= 2) {
      detail::flexible_array<detail::cpuid2_header, kvm_cpuid_entry2> block(capacity);
      block.header()->nent = static_cast<std::uint32_t>(capacity);
      block.header()->padding = 0;
      if (::ioctl(fd_.get(), detail::kvm_get_supported_cpuid, block.header()) < 0) {
        if (errno == E2BIG) {
          continue;
        }
        throw_errno("KVM_GET_SUPPORTED_CPUID");
      }
      return cpuid_table(block.entries(), block.entries() + block.header()->nent);
    }
    throw error("KVM_GET_SUPPORTED_CPUID returned more than 4096 entries");
  }

  // The MSRs KVM saves and restores for a guest (api.rst 4.3 KVM_GET_MSR_INDEX_LIST).
  [[nodiscard]] std::vector<std::uint32_t> msr_index_list() const {
    detail::msr_list_header probe{0};
    if (::ioctl(fd_.get(), detail::kvm_get_msr_index_list, &probe) < 0 && errno != E2BIG) {
      throw_errno("KVM_GET_MSR_INDEX_LIST");
    }
    detail::flexible_array<detail::msr_list_header, std::uint32_t> block(probe.nmsrs);
    block.header()->nmsrs = probe.nmsrs;
    detail::kvm_ioctl(fd_.get(), detail::kvm_get_msr_index_list, block.header(),
                      "KVM_GET_MSR_INDEX_LIST");
    return {block.entries(), block.entries() + block.header()->nmsrs};
  }

private:
  unique_fd fd_;
  std::size_t run_size_ = 0;
};

} // namespace compactor::vmm

#undef COMPACTOR_KVM_IOCTL
