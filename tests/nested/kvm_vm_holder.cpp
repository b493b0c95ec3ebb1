// Holds one idle KVM VM open inside the nested harness's L1, for as long as L1 runs.
//
// Why: every KVM_CREATE_VM and every VM teardown in L1 flips the kernel's
// preempt_notifier_key between 0 and 1, and flipping a static key rewrites a jump inside
// __schedule while both L1 vCPUs run through it. QEMU 7.2's multi-threaded TCG has been caught
// (QEMU's monitor, describe-l1.py) still executing the temporary int3 of such a rewrite after
// the rewrite had finished in memory: the kernel's int3 handler finds no breakpoint there any
// more and returns to the same address, forever, with interrupts off, on both vCPUs. L1 then
// stops responding: 1 in 55 guest boots in one run, 2 in about 20 in another. While this VM
// exists the key stays at 1 or more, so the guests that the tests start and end never rewrite
// that jump (0 stalls in 400 boots).
//
// Usage: kvm-vm-holder [/dev/kvm]   prints "kvm-vm-holder: holding VM fd N" once the VM exists,
//                                    then sleeps until it is killed
#include <compactor/vmm/kvm.hpp>

#include <cstdio>
#include <exception>
#include <string>
#include <unistd.h>

int main(int argc, char** argv) {
  try {
    const compactor::vmm::kvm_system kvm(argc > 1 ? argv[1] : "/dev/kvm");
    const compactor::vmm::vm held = kvm.create_vm();
    std::printf("kvm-vm-holder: holding VM fd %d\n", held.fd());
    std::fflush(stdout);
    for (;;) {
      ::pause();
    }
  } catch (const std::exception& error) {
    std::fprintf(stderr, "kvm-vm-holder: %s\n", error.what());
    return 1;
  }
}
