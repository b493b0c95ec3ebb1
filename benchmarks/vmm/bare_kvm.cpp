// The floor for the VMM benchmark: the least a KVM program can do to run a guest to its exit,
// written against the raw KVM API with none of our library. The guest is four real-mode
// instructions (write 0 to the exit port 0x501, halt).
//
//   bare_kvm [--irqchip] [--memory-mib N] [--phases]
//
// --irqchip adds what every Linux-capable VMM needs and ours always sets up: the in-kernel
// PIC/IOAPIC/LAPIC and PIT. --phases prints how long each step took (to stderr), which is how
// the README's breakdown of the start-to-exit time was measured.
#include <fcntl.h>
#include <linux/kvm.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

namespace {

using clock_type = std::chrono::steady_clock;

struct phase_log {
  bool enabled = false;
  clock_type::time_point last = clock_type::now();
  std::vector<std::pair<const char*, double>> phases;

  void mark(const char* name) {
    const auto now = clock_type::now();
    phases.emplace_back(name, std::chrono::duration<double, std::micro>(now - last).count());
    last = now;
  }

  void print() const {
    if (!enabled) {
      return;
    }
    for (const auto& [name, micros] : phases) {
      std::fprintf(stderr, "%-24s %8.0f us\n", name, micros);
    }
  }
};

[[noreturn]] void fail(const char* call) {
  std::fprintf(stderr, "bare_kvm: %s: %s\n", call, std::strerror(errno));
  std::exit(1);
}

int checked(int result, const char* call) {
  if (result < 0) {
    fail(call);
  }
  return result;
}

} // namespace

int main(int argc, char** argv) {
  bool irqchip = false;
  phase_log log;
  std::uint64_t memory_size = 2ull << 20;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "--irqchip") {
      irqchip = true;
    } else if (argument == "--phases") {
      log.enabled = true;
    } else if (argument == "--memory-mib" && i + 1 < argc) {
      memory_size = std::strtoull(argv[++i], nullptr, 10) << 20;
    } else {
      std::fprintf(stderr, "usage: %s [--irqchip] [--memory-mib N] [--phases]\n", argv[0]);
      return 2;
    }
  }

  const int kvm = checked(::open("/dev/kvm", O_RDWR | O_CLOEXEC), "open /dev/kvm");
  const int vm = checked(::ioctl(kvm, KVM_CREATE_VM, 0), "KVM_CREATE_VM");
  log.mark("create VM");

  void* memory = ::mmap(nullptr, memory_size, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (memory == MAP_FAILED) {
    fail("mmap guest memory");
  }
  // mov dx, 0x501; mov al, 0; out dx, al; hlt
  static constexpr std::uint8_t guest_code[] = {0xba, 0x01, 0x05, 0xb0, 0x00, 0xee, 0xf4};
  constexpr std::uint64_t code_address = 0x1000;
  std::memcpy(static_cast<std::uint8_t*>(memory) + code_address, guest_code, sizeof guest_code);
  kvm_userspace_memory_region region{};
  region.guest_phys_addr = 0;
  region.memory_size = memory_size;
  region.userspace_addr = reinterpret_cast<std::uint64_t>(memory);
  checked(::ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");
  log.mark("guest memory");

  if (irqchip) {
    checked(::ioctl(vm, KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP");
    kvm_pit_config pit{};
    pit.flags = KVM_PIT_SPEAKER_DUMMY;
    checked(::ioctl(vm, KVM_CREATE_PIT2, &pit), "KVM_CREATE_PIT2");
    log.mark("irqchip and PIT");
  }

  const int vcpu = checked(::ioctl(vm, KVM_CREATE_VCPU, 0), "KVM_CREATE_VCPU");
  const int run_size = checked(::ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
  auto* run = static_cast<kvm_run*>(
      ::mmap(nullptr, static_cast<std::size_t>(run_size), PROT_READ | PROT_WRITE, MAP_SHARED,
             vcpu, 0));
  if (run == MAP_FAILED) {
    fail("mmap kvm_run");
  }
  kvm_sregs sregs{};
  checked(::ioctl(vcpu, KVM_GET_SREGS, &sregs), "KVM_GET_SREGS");
  sregs.cs.base = 0;
  sregs.cs.selector = 0;
  checked(::ioctl(vcpu, KVM_SET_SREGS, &sregs), "KVM_SET_SREGS");
  kvm_regs regs{};
  regs.rip = code_address;
  regs.rflags = 0x2;
  checked(::ioctl(vcpu, KVM_SET_REGS, &regs), "KVM_SET_REGS");
  log.mark("vCPU");

  int status = -1;
  while (status < 0) {
    checked(::ioctl(vcpu, KVM_RUN, 0), "KVM_RUN");
    if (run->exit_reason == KVM_EXIT_IO && run->io.port == 0x501 &&
        run->io.direction == KVM_EXIT_IO_OUT) {
      status = reinterpret_cast<std::uint8_t*>(run)[run->io.data_offset];
    } else if (run->exit_reason != KVM_EXIT_IO) {
      std::fprintf(stderr, "bare_kvm: unexpected exit reason %u\n", run->exit_reason);
      return 1;
    }
  }
  log.mark("guest run");

  ::munmap(run, static_cast<std::size_t>(run_size));
  ::close(vcpu);
  ::close(vm);
  ::close(kvm);
  log.mark("VM teardown");
  ::munmap(memory, memory_size);
  log.print();
  return status;
}
