// Boots a probe guest in the VMM and exits with the guest's status: the VMM's side of the
// start-to-exit benchmark (run.sh).
//
//   probe_boot PROBE.ELF [CMDLINE] [--memory-report | --deferred-teardown]
//
// With --memory-report it prints the process's peak RSS and how much of it is guest RAM that
// the guest touched (mincore on the guest mappings), so the VMM's own share is the difference.
// With --deferred-teardown the machine leaves the kernel's VM teardown (tens of milliseconds
// with an in-kernel irqchip on some hosts) to a keeper process, as `compactor` does
// (vmm/deferred_teardown.hpp).
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <string>
#include <vector>

#include <compactor/devices/exit_device.hpp>
#include <compactor/devices/i8042.hpp>
#include <compactor/devices/serial_output.hpp>
#include <compactor/devices/uart_16550.hpp>
#include <compactor/vmm/machine.hpp>

namespace {

using namespace compactor;
using uart = devices::uart_16550<devices::fd_output>;
using bench_machine = vmm::machine<uart, devices::i8042, devices::exit_device>;

long status_kib(const char* field) {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with(field)) {
      return std::stol(line.substr(std::strlen(field)));
    }
  }
  return -1;
}

long resident_guest_kib(const vmm::guest_memory& memory) {
  const long page = ::sysconf(_SC_PAGESIZE);
  long resident = 0;
  for (const auto& region : memory.regions()) {
    std::vector<unsigned char> pages(region.size() / static_cast<std::uint64_t>(page));
    if (::mincore(region.host(), region.size(), pages.data()) == 0) {
      for (const auto in_core : pages) {
        resident += in_core & 1;
      }
    }
  }
  return resident * page / 1024;
}

} // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s PROBE.ELF [CMDLINE] [--memory-report]\n", argv[0]);
    return 2;
  }
  const std::string cmdline = argc > 2 ? argv[2] : "probe=exit status=0";
  const bool memory_report = argc > 3 && std::strcmp(argv[3], "--memory-report") == 0;
  const bool deferred_teardown = argc > 3 && std::strcmp(argv[3], "--deferred-teardown") == 0;
  try {
    vmm::machine_config config;
    config.memory_size = 64 * vmm::layout::mib;
    config.timeout = std::chrono::seconds(10);
    config.deferred_teardown = deferred_teardown;
    bench_machine machine(config, uart(devices::fd_output::to_stdout()), devices::i8042{},
                          devices::exit_device{});
    machine.load_linux(std::filesystem::path(argv[1]), std::nullopt, cmdline);
    const auto report = machine.run();
    if (report.outcome != vmm::run_outcome::exited) {
      std::fprintf(stderr, "%s\n", report.summary().c_str());
    }
    if (memory_report) {
      const long peak = status_kib("VmHWM:");
      const long guest = resident_guest_kib(machine.memory());
      std::fprintf(stderr,
                   "peak RSS %ld KiB (anonymous %ld KiB, file-backed %ld KiB); guest RAM "
                   "resident %ld KiB; VMM beyond guest RAM %ld KiB\n",
                   peak, status_kib("RssAnon:"), status_kib("RssFile:"), guest, peak - guest);
    }
    return report.process_exit_status();
  } catch (const std::exception& failure) {
    std::fprintf(stderr, "probe_boot: %s\n", failure.what());
    return 1;
  }
}
