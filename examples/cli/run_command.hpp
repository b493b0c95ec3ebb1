// `compactor run [IMAGE] [COMMAND...]`: a container image booted as a micro-VM in one step.
// Resolves (and pulls) the image, builds its initramfs or takes it from the cache, boots it with
// the embedded kernel on our VMM or QEMU, and exits with the workload's status.
#pragma once

#include <net/if.h>
#include <signal.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <compactor/guest/kernel_parameters.hpp>
#include <compactor/hypervisors/kvm.hpp>
#include <compactor/hypervisors/qemu.hpp>
#include <compactor/hypervisors/select.hpp>
#include <compactor/image/digest.hpp>
#include <compactor/image/resolve.hpp>
#include <compactor/initramfs/builder.hpp>

#include "boot_command.hpp"
#include "embedded_guest.hpp"
#include "image_options.hpp"
#include "launch_options.hpp"

namespace compactor::commands {

namespace detail {

using clock = std::chrono::steady_clock;

inline long long milliseconds(clock::duration duration) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(duration).count();
}

// SIGINT, SIGTERM and SIGHUP are taken by a thread of ours while the guest runs, which stops
// the guest; the run then ends like `docker run` with 128 + the signal's number.
class signal_guard {
public:
  explicit signal_guard(std::function<void()> stop) : stop_(std::move(stop)) {
    sigemptyset(&signals_);
    for (const int signal : {SIGINT, SIGTERM, SIGHUP}) {
      sigaddset(&signals_, signal);
    }
    pthread_sigmask(SIG_BLOCK, &signals_, &previous_);
    waiter_ = std::thread([this] {
      const timespec tick{0, 100'000'000};
      while (!done_) {
        const int signal = sigtimedwait(&signals_, nullptr, &tick);
        if (signal > 0) {
          received_ = signal;
          stop_();
        }
      }
    });
  }

  ~signal_guard() {
    done_ = true;
    waiter_.join();
    pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }

  signal_guard(const signal_guard&) = delete;
  signal_guard& operator=(const signal_guard&) = delete;

  [[nodiscard]] int received() const noexcept { return received_; }

private:
  std::function<void()> stop_;
  sigset_t signals_{};
  sigset_t previous_{};
  std::atomic<bool> done_{false};
  std::atomic<int> received_{0};
  std::thread waiter_;
};

// The terminal's settings, put back on every way out of the run.
class terminal_guard {
public:
  terminal_guard() : saved_(::tcgetattr(STDIN_FILENO, &settings_) == 0) {}
  ~terminal_guard() {
    if (saved_) {
      ::tcsetattr(STDIN_FILENO, TCSANOW, &settings_);
    }
  }
  terminal_guard(const terminal_guard&) = delete;
  terminal_guard& operator=(const terminal_guard&) = delete;

private:
  termios settings_{};
  bool saved_;
};

// What makes one initramfs differ from another: the image's content, what the user changed,
// the embedded init, and the transferred files as they are now (size and time of each).
inline std::string initramfs_key(const image::resolved_image& image,
                                 const initramfs::build_options& options) {
  nlohmann::json key;
  key["config"] = image.config_digest;
  for (const auto& layer : image.layers) {
    key["layers"].push_back(layer.digest);
  }
  key["launch"] = guest::write_launch_config(
      initramfs::make_launch_config(image.config, options.launch));
  key["compression"] = archive::to_string(options.compression.method);
  image::sha256 init;
  init.update(options.init_binary);
  key["init"] = init.finish();
  for (const auto& transfer : options.transfers) {
    nlohmann::json files = nlohmann::json::array();
    const auto note = [&](const std::filesystem::path& path) {
      struct stat status {};
      if (::lstat(path.c_str(), &status) == 0) {
        files.push_back({path.string(), status.st_size, status.st_mtim.tv_sec,
                         status.st_mtim.tv_nsec, status.st_mode});
      }
    };
    note(transfer.host);
    if (std::filesystem::is_directory(transfer.host)) {
      for (const auto& entry : std::filesystem::recursive_directory_iterator(transfer.host)) {
        note(entry.path());
      }
    }
    key["transfers"].push_back({transfer.guest, files});
  }
  image::sha256 hash;
  hash.update(key.dump());
  return hash.finish().substr(std::string_view("sha256:").size(), 32);
}

inline void show_pull_progress(const image::pull_progress& progress) {
  if (progress.total > 0) {
    fmt::print(stderr, "\r{:<14} {:<22} {:>4} of {:>4} MB", progress.id, progress.status,
               progress.current >> 20, progress.total >> 20);
  } else {
    fmt::print(stderr, "\r{:<14} {:<40}", progress.id, progress.status);
  }
  if (progress.status.find("complete") != std::string::npos ||
      progress.status.starts_with("Status")) {
    fmt::print(stderr, "\n");
  }
}

} // namespace detail

struct run_command {
  CLI::App* app = nullptr;
  std::string reference;
  std::vector<std::string> command;
  std::string kernel;
  bool interactive = false;
  bool verbose = false;
  std::string ip;
  std::string gateway;
  std::vector<std::string> dns;
  image_options source;
  launch_options launch;
  machine_options machine;

  [[nodiscard]] bool parsed() const { return app->parsed(); }

  int run() const {
    const auto started = detail::clock::now();
    const auto say = [&](std::string_view format, const auto&... arguments) {
      if (verbose) {
        fmt::print(stderr, "compactor: {}\n",
                   fmt::vformat(format, fmt::make_format_args(arguments...)));
      }
    };

    // What to run and how, checked before anything is fetched or built.
    initramfs::build_options build;
    build.launch = launch.overrides(command);
    build.transfers = launch.transfer_list();
    build.init_binary = embedded_init();
    hypervisors::guest_spec spec;
    machine.fill(spec);
    spec.interactive = interactive;
    if (!spec.tap && ::if_nametoindex("tap0") != 0) {
      spec.tap = "tap0";
    }
    if (!spec.tap && ::isatty(STDERR_FILENO)) {
      fmt::print(stderr, "compactor: no tap0 interface and no --tap: the guest has no network\n");
    }
    guest::network_parameters network;
    if (!ip.empty()) {
      const auto slash = ip.find('/');
      network.address = ip.substr(0, slash);
      if (slash != std::string::npos) {
        network.prefix_length = static_cast<unsigned>(std::stoul(ip.substr(slash + 1)));
      }
    }
    network.gateway = gateway;
    static_cast<void>(initramfs::resolv_conf(dns)); // refuses a loopback or malformed --dns
    network.dns = dns;
    spec.guest_parameters = guest::init_kernel_arguments() + " " +
                            guest::network_kernel_arguments(network);
    const auto chosen =
        hypervisors::choose_hypervisor(hypervisors::parse_hypervisor(machine.hypervisor));

    // The image.
    auto options = source.resolve_options();
    if (::isatty(STDERR_FILENO)) {
      options.on_pull_progress = detail::show_pull_progress;
    }
    const auto image = image::resolve(reference.empty() ? demo_image_reference() : reference,
                                      options);
    const auto resolved = detail::clock::now();
    say("image {} ({} layers) in {} ms", image.name.empty() ? image.source : image.name,
        image.layers.size(), detail::milliseconds(resolved - started));

    // Its initramfs, from the cache when this image and these options were built before.
    const auto directory = image::blob_cache::default_root() / "initramfs";
    std::filesystem::create_directories(directory);
    spec.initrd = directory / (detail::initramfs_key(image, build) + ".cpio.zst");
    auto size = initramfs::read_size_record(spec.initrd);
    const bool cached = size.has_value();
    if (!cached) {
      size = initramfs::build(image, build, spec.initrd).size;
      initramfs::write_size_record(spec.initrd, *size);
    }
    const auto flattened = detail::clock::now();
    say("initramfs {} {} in {} ms ({} bytes; unpacks to {} files in {} bytes of pages)",
        spec.initrd.string(), cached ? "from the cache" : "built",
        detail::milliseconds(flattened - resolved), size->compressed, size->inodes,
        size->page_bytes);

    spec.kernel = kernel.empty() ? embedded_kernel_file() : std::filesystem::path(kernel);
    // Refused here rather than by a guest that fails while unpacking.
    initramfs::check_fits_in_guest(*size, initramfs::kernel_memory_bytes(spec.kernel),
                                   spec.memory_mib,
                                   initramfs::root_filesystem_for(spec.guest_parameters));
    say("booting with {} ({})", chosen == hypervisors::hypervisor::kvm ? "our VMM" : "QEMU",
        spec.kernel.string());

    // The guest.
    detail::terminal_guard terminal;
    hypervisors::run_result result;
    int signal = 0;
    if (chosen == hypervisors::hypervisor::kvm) {
      hypervisors::kvm_runner runner(machine.kvm());
      detail::signal_guard signals([&] { runner.stop(); });
      result = runner.run(spec);
      signal = signals.received();
    } else {
      hypervisors::qemu_runner runner;
      detail::signal_guard signals([&] { runner.stop(); });
      result = runner.run(spec);
      signal = signals.received();
    }
    say("guest ran for {} ms; {} ms in all", detail::milliseconds(detail::clock::now() - flattened),
        detail::milliseconds(detail::clock::now() - started));

    if (signal != 0) {
      return 128 + signal;
    }
    if (!result.status) {
      throw compactor::error(result.failure);
    }
    return *result.status;
  }
};

inline void add_run(CLI::App& app, run_command& command) {
  command.app = app.add_subcommand(
      "run", "Boot an image as a micro-VM and exit with its workload's status "
             "(no image: a demo image made from busybox)");
  command.app->add_option("image", command.reference,
                          "NAME[:TAG][@DIGEST], docker://REF, docker-daemon:NAME, "
                          "docker-archive:PATH, oci:DIR[:TAG] or oci-archive:PATH[:TAG]");
  command.app->add_option("command", command.command,
                          "Replaces the image's CMD (put it after --, when it has options)");
  command.app->add_option("--kernel", command.kernel,
                          "A kernel (ELF vmlinux or bzImage) instead of the embedded one")
      ->check(CLI::ExistingFile);
  command.app->add_flag("-i,--interactive", command.interactive,
                        "Connect stdin to the guest's console (on a terminal: raw, "
                        "Ctrl-A x quits)");
  command.app->add_option("--ip", command.ip, "eth0's address, ADDRESS/PREFIX");
  command.app->add_option("--gateway", command.gateway, "The default route");
  command.app->add_option("--dns", command.dns, "Name servers for /etc/resolv.conf")
      ->delimiter(',')
      ->allow_extra_args(false);
  command.app->add_flag("-v,--verbose", command.verbose, "Say each step and how long it took");
  command.source.add_to(*command.app);
  command.launch.add_to(*command.app);
  command.machine.add_to(*command.app);
}

} // namespace compactor::commands
