// The machine under KVM, tested from inside by the probe guest (probe/probe.cpp). The probe
// is booted like a vmlinux: ELF loader, zero page, command line, initrd, long mode.
#include <catch2/catch.hpp>

#include <chrono>
#include <random>
#include <regex>
#include <thread>

#include <compactor/devices/exit_device.hpp>
#include <compactor/devices/i8042.hpp>
#include <compactor/devices/uart_16550.hpp>
#include <compactor/vmm/machine.hpp>

#include "vmm/vmm_probe_image.hpp"

using namespace compactor;
using namespace std::chrono_literals;

namespace {

using uart = devices::uart_16550<devices::string_output>;
using probe_machine = vmm::machine<uart, devices::i8042, devices::exit_device>;

// How the secondary vCPUs start: at the probe's entry with the bootstrap one (most probes), or
// as on hardware, waiting for an INIT/SIPI that the probes never send.
enum class secondaries { start_at_entry, wait_for_sipi };

struct probe_run {
  devices::string_output console;
  std::vector<std::string> logs;
  std::unique_ptr<probe_machine> machine;

  explicit probe_run(unsigned vcpus = 1, std::chrono::milliseconds timeout = 20s,
                     secondaries start = secondaries::start_at_entry) {
    vmm::machine_config config;
    config.vcpus = vcpus;
    config.memory_size = 64 * vmm::layout::mib;
    config.timeout = timeout;
    config.start_all_vcpus_at_entry = start == secondaries::start_at_entry;
    config.log = [this](std::string_view line) { logs.emplace_back(line); };
    machine = std::make_unique<probe_machine>(config, uart(console), devices::i8042{},
                                              devices::exit_device{});
  }

  vmm::run_report boot(std::string_view cmdline, std::span<const std::uint8_t> initrd = {},
                       vmm::x86::boot_entry entry = vmm::x86::boot_entry::linux_64) {
    machine->load_linux(testing::probe_image, initrd, cmdline, entry);
    return machine->run();
  }
};

std::uint32_t fnv1a(std::span<const std::uint8_t> bytes) {
  std::uint32_t hash = 2166136261u;
  for (const auto byte : bytes) {
    hash = (hash ^ byte) * 16777619u;
  }
  return hash;
}

} // namespace

TEST_CASE("probe: the exit port ends the run with the guest's status", "[kvm][needs-kvm]") {
  for (const int status : {0, 42, 255}) {
    probe_run run;
    const auto report = run.boot(fmt::format("probe=exit status={}", status));
    INFO(report.summary());
    CHECK(report.outcome == vmm::run_outcome::exited);
    CHECK(report.exit_status == status);
    CHECK(report.process_exit_status() == status);
    CHECK(run.machine->device<devices::exit_device>().exit_status() == status);
  }
}

TEST_CASE("probe: the zero page or PVH start info carries the memory map, command line and "
          "initrd",
          "[kvm][needs-kvm]") {
  const auto entry = GENERATE(vmm::x86::boot_entry::linux_64, vmm::x86::boot_entry::pvh);
  probe_run run;
  std::vector<std::uint8_t> initrd(12345);
  std::mt19937 random(std::random_device{}());
  for (auto& byte : initrd) {
    byte = static_cast<std::uint8_t>(random());
  }
  const std::string extra = fmt::format("probe=boot token={}", random());
  const auto report = run.boot(extra, initrd, entry);
  INFO(report.summary());
  INFO(run.console.text());
  REQUIRE(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 0);

  const auto text = run.console.text();
  CHECK_THAT(text, Catch::StartsWith(entry == vmm::x86::boot_entry::pvh ? "entry pvh\n"
                                                                        : "entry 64-bit\n"));
  CHECK_THAT(text, Catch::Contains("e820 0x0 0x9fc00 1\n"));
  CHECK_THAT(text, Catch::Contains("e820 0x9fc00 0x60400 2\n"));
  CHECK_THAT(text, Catch::Contains("e820 0x100000 0x3f00000 1\n"));
  CHECK_THAT(text, Catch::Contains("cmdline " + run.machine->kernel_cmdline(extra) + "\n"));
  CHECK_THAT(text, Catch::Contains("console=ttyS0") && Catch::Contains("reboot=k"));
  std::smatch match;
  REQUIRE(std::regex_search(text, match, std::regex("initrd (0x[0-9a-f]+) (\\d+) (0x[0-9a-f]+)")));
  CHECK(std::stoull(match[1].str(), nullptr, 16) % 4096 == 0);
  CHECK(match[2].str() == std::to_string(initrd.size()));
  CHECK(match[3].str() == fmt::format("{:#x}", fnv1a(initrd)));
}

TEST_CASE("probe: the UART's registers behave as a 16550A from the guest", "[kvm][needs-kvm]") {
  probe_run run;
  const auto report = run.boot("probe=serial");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 0); // otherwise the number of the failed step
  CHECK(run.console.text() == "serial ok\n");
}

TEST_CASE("probe: interrupts reach an IDT gate through the PIC, from the UART and the host",
          "[kvm][needs-kvm]") {
  probe_run run;
  run.machine->load_linux(testing::probe_image, {}, "probe=irq",
                          vmm::x86::boot_entry::linux_64);
  std::jthread host_irq([&](std::stop_token stop) {
    while (!stop.stop_requested()) {
      if (run.console.text().find("ready for irq5") != std::string::npos) {
        run.machine->set_irq_line(5, true);
        run.machine->set_irq_line(5, false);
        return;
      }
      std::this_thread::sleep_for(1ms);
    }
  });
  const auto report = run.machine->run();
  host_irq.request_stop();
  INFO(report.summary());
  INFO(run.console.text());
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 0);
  CHECK_THAT(run.console.text(), Catch::Contains("irq4 1\n") && Catch::Contains("irq5 1\n"));
}

TEST_CASE("probe: reboot through the i8042 ends the run with a reset", "[kvm][needs-kvm]") {
  probe_run run;
  const auto report = run.boot("probe=reset");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::reset);
  CHECK(report.process_exit_status() == 0);
  CHECK(run.machine->device<devices::i8042>().reset_requested());
}

TEST_CASE("probe: every vCPU runs on its own thread and reports its APIC id",
          "[kvm][needs-kvm]") {
  const unsigned cpus = 4;
  probe_run run(cpus);
  const auto report =
      run.boot(fmt::format("probe=smp cpus={}", cpus), {}, vmm::x86::boot_entry::automatic);
  CHECK(run.machine->memory().read_object<std::uint32_t>(0x7000) == 0x336ec578); // PVH chosen
  INFO(report.summary());
  INFO(run.console.text());
  REQUIRE(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 0);
  for (unsigned id = 0; id < cpus; ++id) {
    // The local APIC and CPUID leaf 1 agree on each vCPU's id.
    CHECK_THAT(run.console.text(), Catch::Contains(fmt::format("cpu {} cpuid {}\n", id, id)));
  }
  // The MP table announces the same CPUs to a kernel.
  const auto mp = run.machine->memory().read_object<std::array<char, 4>>(0x9fc00);
  CHECK(std::string(mp.data(), 4) == "_MP_");
}

TEST_CASE("probe: an unknown port reads all ones and is logged once", "[kvm][needs-kvm]") {
  probe_run run;
  const auto report = run.boot("probe=unknown-port");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 0); // 1: the guest read something other than 0xff
  REQUIRE(run.logs.size() == 2);  // ports 0x1234 and 0x1238, each once
  CHECK_THAT(run.logs[0], Catch::Contains("0x1234"));
  CHECK(run.machine->unclaimed_accesses().port_writes == 1);
  CHECK(run.machine->unclaimed_accesses().port_reads == 2);
}

TEST_CASE("probe: unmapped MMIO reads all ones and is logged with its address",
          "[kvm][needs-kvm]") {
  probe_run run;
  const auto report = run.boot("probe=unmapped-mmio");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 0);
  REQUIRE(run.logs.size() == 1);
  CHECK_THAT(run.logs[0], Catch::Contains("0xe0000000"));
}

TEST_CASE("probe: a triple fault ends the run with a shutdown report", "[kvm][needs-kvm]") {
  probe_run run;
  const auto report = run.boot("probe=triple-fault");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::shutdown);
  CHECK_FALSE(report.exit_status);
  CHECK_THAT(report.summary(), Catch::Contains("triple fault") && Catch::Contains("rip 0x"));
  CHECK(report.process_exit_status() != 0);
}

TEST_CASE("probe: a guest that halts forever is ended by the run limit", "[kvm][needs-kvm]") {
  probe_run run(2, 300ms);
  const auto start = std::chrono::steady_clock::now();
  const auto report = run.boot("probe=hang");
  CHECK(report.outcome == vmm::run_outcome::timed_out);
  CHECK(std::chrono::steady_clock::now() - start < 5s);
  // The report says where each vCPU was: both halted with interrupts off (the probe starts
  // every vCPU at its entry; the second reports its APIC id and halts).
  INFO(report.summary());
  CHECK(std::regex_search(report.detail,
                          std::regex("\\(vCPU 0 at rip 0x[0-9a-f]+, interrupts off, halted; "
                                     "vCPU 1 at rip 0x[0-9a-f]+, interrupts off, halted\\)$")));
}

TEST_CASE("probe: stop() from another thread ends a running guest", "[kvm][needs-kvm]") {
  probe_run run(1, 20s);
  run.machine->load_linux(testing::probe_image, {}, "probe=hang", vmm::x86::boot_entry::pvh);
  std::jthread stopper([&] {
    std::this_thread::sleep_for(100ms);
    run.machine->stop();
  });
  const auto report = run.machine->run();
  CHECK(report.outcome == vmm::run_outcome::stopped);
}

TEST_CASE("machine: a guest without a kernel, a second run and bad sizes are clear errors",
          "[kvm][needs-kvm]") {
  probe_run run;
  CHECK_THROWS_WITH(run.machine->run(), Catch::Contains("load_linux"));
  vmm::machine_config config;
  config.vcpus = 0;
  CHECK_THROWS_WITH(probe_machine(config, uart(devices::string_output{}), devices::i8042{},
                                  devices::exit_device{}),
                    Catch::Contains("vCPUs"));
  config.vcpus = 1;
  config.kvm_device = "/nonexistent/kvm";
  CHECK_THROWS_WITH(probe_machine(config, uart(devices::string_output{}), devices::i8042{},
                                  devices::exit_device{}),
                    Catch::Contains("/nonexistent/kvm"));
}

TEST_CASE("probe: CPUID carries the KVM signature leaf, the hypervisor flag and, where KVM "
          "emulates it, the TSC-deadline timer",
          "[kvm][needs-kvm]") {
  const bool tsc_deadline =
      vmm::kvm_system().check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  probe_run run;
  const auto report = run.boot("probe=cpuid");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(run.console.text() == fmt::format("hypervisor KVMKVMKVM flag {}\n",
                                          tsc_deadline ? "tsc-deadline" : "no-tsc-deadline"));
}

TEST_CASE("probe: the local APIC timer interrupts in TSC-deadline mode where KVM emulates it",
          "[kvm][needs-kvm]") {
  // x86 KVM has reported the capability unconditionally since Linux 3.x; without it the
  // machine must not offer the mode.
  const bool emulated = vmm::kvm_system().check_extension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  probe_run run;
  const auto report = run.boot("probe=tsc-deadline");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::exited);
  if (emulated) {
    CHECK(report.exit_status == 0);
    CHECK(run.console.text() == "tsc-deadline timer fired\n");
  } else {
    CHECK(report.exit_status == 1);
    CHECK(run.console.text() == "no tsc-deadline in cpuid\n");
  }
}

TEST_CASE("probe: string I/O (rep outsb) reaches the device byte by byte", "[kvm][needs-kvm]") {
  probe_run run;
  const auto report = run.boot("probe=string-io");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(run.console.text() == "rep outsb ok\n");
}

TEST_CASE("probe: secondary vCPUs wait for a SIPI by default and never block the end",
          "[kvm][needs-kvm]") {
  probe_run run(3, 20s, secondaries::wait_for_sipi);
  const auto report = run.boot("probe=exit status=7");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::exited);
  CHECK(report.exit_status == 7);
  CHECK(run.console.text().empty()); // no AP reported an id: none ran
}

TEST_CASE("probe: a timed-out run reports the vCPUs that never started", "[kvm][needs-kvm]") {
  probe_run run(3, 300ms, secondaries::wait_for_sipi);
  const auto report = run.boot("probe=hang");
  INFO(report.summary());
  CHECK(report.outcome == vmm::run_outcome::timed_out);
  CHECK_THAT(report.detail, Catch::EndsWith("halted; vCPU 1 not started; vCPU 2 not started)"));
}

namespace {

// A device whose host side fails, as a disk backend might: the run must end with a report,
// not take the VMM down. It sits on the port the unknown-port probe writes first.
struct failing_device {
  static constexpr std::string_view name = "failing";
  static constexpr std::array<vmm::port_range, 1> ports = {vmm::port_range{0x1234, 1}};
  void io_in(std::uint16_t, std::span<std::uint8_t> data) { std::ranges::fill(data, 0); }
  void io_out(std::uint16_t, std::span<const std::uint8_t>) {
    throw std::runtime_error("backend write failed");
  }
};

} // namespace

TEST_CASE("probe: a device added to the list is dispatched to; its host failure ends the run",
          "[kvm][needs-kvm]") {
  using machine_with_failing_device =
      vmm::machine<uart, devices::i8042, devices::exit_device, failing_device>;
  vmm::machine_config config;
  config.memory_size = 64 * vmm::layout::mib;
  config.timeout = 20s;
  machine_with_failing_device machine(config, uart(devices::string_output{}), devices::i8042{},
                                      devices::exit_device{}, failing_device{});
  machine.load_linux(testing::probe_image, {}, "probe=unknown-port");
  const auto report = machine.run();
  CHECK(report.outcome == vmm::run_outcome::host_error);
  CHECK_THAT(report.summary(), Catch::Contains("backend write failed"));
  CHECK(machine.unclaimed_accesses().port_writes == 0);
}
