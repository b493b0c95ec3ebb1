// The guest init: PID 1 of a Compactor micro-VM.
//
// It prepares what a container expects (file systems, hostname, network, resolver files),
// runs the image's workload as launch_config.hpp describes it, and reports the workload's
// status to the host through the port protocol (protocol.hpp) and a last console line. Then
// the machine ends; whatever goes wrong on the way, the host gets a status and the guest never
// hangs or panics (PID 1 exiting would panic the kernel).
#include <sys/reboot.h>
#include <termios.h>
#include <unistd.h>

#include <cstdio>
#include <exception>
#include <fstream>
#include <sstream>
#include <string>

#include <compactor/guest/kernel_parameters.hpp>
#include <compactor/guest/launch_config.hpp>
#include <compactor/guest/protocol.hpp>
#include <compactor/guest/user_database.hpp>

#include "console.hpp"
#include "mounts.hpp"
#include "network.hpp"
#include "port_io.hpp"
#include "workload.hpp"

namespace {

using namespace compactor;

std::string read_file(const char* path, bool required) {
  std::ifstream file(path);
  if (!file) {
    if (required) {
      throw error(std::string("cannot read ") + path);
    }
    return {};
  }
  std::ostringstream text;
  text << file.rdbuf();
  return text.str();
}

bool has_variable(const std::vector<std::string>& env, std::string_view name) {
  return std::any_of(env.begin(), env.end(), [&](const std::string& entry) {
    return entry.starts_with(name) && entry.size() > name.size() && entry[name.size()] == '=';
  });
}

// The environment `docker run` gives a process: the image's and the user's variables, plus
// PATH, HOSTNAME and HOME where they are missing.
std::vector<std::string> workload_environment(const guest::launch_config& config,
                                              const std::string& hostname,
                                              const guest::exec_user& user) {
  std::vector<std::string> env;
  if (!has_variable(config.env, "PATH")) {
    env.emplace_back("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
  }
  if (!has_variable(config.env, "HOSTNAME")) {
    env.push_back("HOSTNAME=" + hostname);
  }
  env.insert(env.end(), config.env.begin(), config.env.end());
  if (!has_variable(config.env, "HOME")) {
    env.push_back("HOME=" + user.home);
  }
  return env;
}

int run(const init::port_io& ports) {
  init::mount_kernel_file_systems();
  init::open_console_if_closed();
  if (!ports.usable()) {
    init::log_line("no access to I/O ports (a kernel without CONFIG_X86_IOPL_IOPERM?): the "
                   "status is reported on the console only");
  }
  init::mount_container_file_systems();

  const auto config = guest::parse_launch_config(read_file(guest::launch_config_path, true));
  const auto hostname =
      config.hostname.empty() ? std::string(guest::launch_config::default_hostname)
                              : config.hostname;
  check_syscall(::sethostname(hostname.data(), hostname.size()), "sethostname");

  const auto network = guest::parse_network_parameters(read_file("/proc/cmdline", true));
  init::configure_network(network, hostname);

  const auto user = guest::resolve_user(config.user,
                                        guest::parse_passwd(read_file("/etc/passwd", false)),
                                        guest::parse_group(read_file("/etc/group", false)));

  init::workload work;
  work.argv = config.argv();
  work.env = workload_environment(config, hostname, user);
  work.workdir = config.workdir.empty() ? "/" : config.workdir;
  std::error_code ignored;
  std::filesystem::create_directories(work.workdir, ignored);
  work.user = user;
  return init::run_workload(work);
}

[[noreturn]] void finish(const init::port_io& ports, int status) {
  ::sync();
  const auto line = std::string(guest::exit_status_console_prefix) + std::to_string(status) + "\n";
  [[maybe_unused]] const auto written = ::write(STDERR_FILENO, line.data(), line.size());
  // The 8250 driver sends in the background; let the console drain before the VM ends.
  ::tcdrain(STDERR_FILENO);
  ports.report_exit_status(static_cast<std::uint8_t>(status));

  // Without ACPI the kernel cannot power off (it would only halt), so where no exit port
  // ended the machine, a reset does: QEMU -no-reboot and micro-VMMs treat it as the end.
  ::reboot(RB_AUTOBOOT);
  for (;;) {
    ::pause();
  }
}

} // namespace

int main() {
  const init::port_io ports;
  ports.mark_init_reached();

  int status = guest::init_failure_status;
  try {
    init::block_supervised_signals();
    // Ctrl-Alt-Del becomes SIGINT for the init, which forwards it, instead of a reset.
    ::reboot(RB_DISABLE_CAD);
    status = run(ports);
  } catch (const std::exception& failure) {
    init::log_line("error: %s", failure.what());
  } catch (...) {
    init::log_line("error: unexpected failure");
  }
  finish(ports, status);
}
