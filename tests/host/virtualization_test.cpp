#include <catch2/catch.hpp>

#include <compactor/host/virtualization.hpp>

using namespace compactor::host;

TEST_CASE("cpu flags: vmx and svm are found as whole words on flags lines", "[unit]") {
  const auto intel = parse_cpu_flags("processor\t: 0\nflags\t\t: fpu vme de pse vmx sse2\n");
  CHECK(intel.vmx);
  CHECK_FALSE(intel.svm);
  CHECK(intel.available());

  const auto amd = parse_cpu_flags("flags\t: fpu svm lm\nflags\t: fpu svm lm\n");
  CHECK(amd.svm);
  CHECK_FALSE(amd.vmx);

  const auto neither = parse_cpu_flags("flags\t: fpu vmxsomething nosvm hypervisor\n"
                                       "model name\t: vmx svm in a name is not a flag\n");
  CHECK_FALSE(neither.available());

  CHECK_FALSE(parse_cpu_flags("").available());
}

TEST_CASE("cpu flags: this machine's /proc/cpuinfo agrees with a plain word search",
          "[unit]") {
  std::ifstream file("/proc/cpuinfo");
  std::string word;
  bool has_vmx = false;
  bool has_svm = false;
  while (file >> word) {
    has_vmx = has_vmx || word == "vmx";
    has_svm = has_svm || word == "svm";
  }
  const auto parsed = read_cpu_virtualization();
  CHECK(parsed.vmx == has_vmx);
  CHECK(parsed.svm == has_svm);
}

TEST_CASE("kvm probe: a missing device is reported with its path and the system's reason",
          "[unit]") {
  const auto status = probe_kvm("/nonexistent/kvm");
  CHECK_FALSE(status.usable);
  CHECK_THAT(status.problem, Catch::Contains("/nonexistent/kvm") &&
                                 Catch::Contains("No such file or directory"));
}

TEST_CASE("kvm probe: a device that is not KVM is refused", "[unit]") {
  const auto status = probe_kvm("/dev/null");
  CHECK_FALSE(status.usable);
  CHECK_THAT(status.problem, Catch::Contains("KVM API version"));
}

TEST_CASE("kvm probe: /dev/kvm speaks API 12 and creates a VM", "[kvm][needs-kvm]") {
  const auto status = probe_kvm();
  CHECK(status.usable);
  CHECK(status.api_version == 12);
  CHECK(status.problem.empty());
}

TEST_CASE("virtualization report: Linux boots only with both KVM and vmx/svm", "[unit]") {
  virtualization_report report;
  report.kvm.usable = true;
  report.cpu.svm = false;
  CHECK_FALSE(report.can_boot_linux());
  CHECK_THAT(report.why_linux_cannot_boot(), Catch::Contains("no vmx or svm"));

  report.cpu.svm = true;
  CHECK(report.can_boot_linux());
  CHECK(report.why_linux_cannot_boot().empty());

  report.kvm = probe_kvm("/nonexistent/kvm");
  CHECK_FALSE(report.can_boot_linux());
  CHECK_THAT(report.why_linux_cannot_boot(), Catch::StartsWith("KVM is not usable"));
}
