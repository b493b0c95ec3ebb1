// The guest kernel and init, booted under QEMU with a busybox image: what the workload sees
// and the status the host gets back. Each boot ends with the init's report through the exit
// port, so QEMU's own exit status checks the port protocol too.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <future>
#include <memory>
#include <thread>

#include "qemu_guest.hpp"

using namespace compactor;
using namespace compactor::testing;
using Catch::Contains;

namespace {

guest::launch_config shell(const std::string& script) {
  guest::launch_config config;
  config.entrypoint = {"/bin/sh", "-c"};
  config.cmd = {script};
  return config;
}

guest_run boot_config(const guest::launch_config& config, const boot_options& options = {},
                      const file_list& files = {}, bool console_node = true) {
  scratch_directory scratch;
  const auto initramfs = scratch.path() / "initramfs.cpio";
  write_busybox_initramfs(initramfs, config, files, console_node);
  auto run = boot(initramfs, options);
  INFO("console:\n" << run.console);
  REQUIRE_FALSE(run.timed_out);
  REQUIRE(run.reported_status.has_value());
  CHECK(run.qemu_status == qemu_status_for(*run.reported_status));
  return run;
}

bool contains(const std::vector<std::string>& lines, const std::string& wanted) {
  return std::find(lines.begin(), lines.end(), wanted) != lines.end();
}

} // namespace

TEST_CASE("guest: the workload runs as USER in WORKDIR with the image's and Docker's "
          "environment, and its exit code comes back",
          "[qemu][needs-qemu]") {
  auto config = shell("echo \"id: $(id)\"; echo \"pwd: $(pwd)\"; env | sed 's/^/env: /';"
                      "sed 's/^/resolv: /' /etc/resolv.conf; echo \"hostname: $(hostname)\";"
                      "touch /tmp/written-by-app && echo tmp: writable; exit 3");
  config.env = {"GREETING=hello world", "PATH=/bin:/usr/bin"};
  config.workdir = "/srv/work";
  config.user = "app";
  config.hostname = "guest-test";
  boot_options options;
  options.extra_kernel_arguments = "compactor.dns=192.0.2.53,192.0.2.54";
  const auto run = boot_config(config, options);
  INFO("console:\n" << run.console);

  CHECK(run.reported_status == 3);
  CHECK(run.lines("id: ") ==
        std::vector<std::string>{"uid=1000(app) gid=1000(app) groups=10(wheel),29(audio)"});
  CHECK(run.lines("pwd: ") == std::vector<std::string>{"/srv/work"});
  const auto env = run.lines("env: ");
  CHECK(contains(env, "GREETING=hello world"));
  CHECK(contains(env, "PATH=/bin:/usr/bin"));
  CHECK(contains(env, "HOME=/home/app"));
  CHECK(contains(env, "HOSTNAME=guest-test"));
  CHECK(run.lines("resolv: ") ==
        std::vector<std::string>{"nameserver 192.0.2.53", "nameserver 192.0.2.54"});
  CHECK(run.lines("hostname: ") == std::vector<std::string>{"guest-test"});
  CHECK(run.lines("tmp: ") == std::vector<std::string>{"writable"});
}

TEST_CASE("guest: an ext4 disk, mounts (the image's own /run kept), network set-up, zombie "
          "reaping and signal forwarding",
          "[qemu][needs-qemu]") {
  // An ext4 disk holding one file, made with e2fsprogs.
  scratch_directory scratch;
  const auto disk = scratch.path() / "disk.ext4";
  std::filesystem::create_directory(scratch.path() / "content");
  std::ofstream(scratch.path() / "content" / "hello.txt") << "compactor-disk-marker\n";
  const auto make_disk = "mke2fs -q -F -t ext4 -d " + (scratch.path() / "content").string() + " " +
                         disk.string() + " 8M >/dev/null";
  REQUIRE(std::system(make_disk.c_str()) == 0);

  const auto config = shell(
      "mkdir /mnt && mount -t ext4 /dev/vda /mnt && echo \"disk: $(cat /mnt/hello.txt)\";"
      "echo written-by-guest > /mnt/out.txt && umount /mnt;"
      "for m in /proc /sys /dev /dev/pts /dev/shm /dev/mqueue /sys/fs/cgroup /tmp /run; do"
      "  grep -q \" $m \" /proc/mounts && echo \"mounted: $m\"; done;"
      "echo \"image-run: $(cat /run/marker)\";"
      "ip -4 -o addr show dev eth0 | sed 's/^/eth0: /';"
      "ip -4 -o addr show dev lo | sed 's/^/lo: /';"
      "ip route | sed 's/^/route: /';"
      "(sleep 0.2 &); sleep 1; ps -o pid,stat,comm | grep -c ' Z ' | sed 's/^/zombies: /';"
      "trap 'echo forwarded: TERM; exit 42' TERM; kill -TERM 1;"
      "while true; do sleep 1; done");
  boot_options options;
  options.extra_kernel_arguments = "compactor.ip=10.0.2.15/24 compactor.gw=10.0.2.2";
  options.extra_qemu_arguments = {
      "-drive",  "file=" + disk.string() + ",if=none,id=d0,format=raw",
      "-device", "virtio-blk-device,drive=d0",
      "-netdev", "user,id=n0",
      "-device", "virtio-net-device,netdev=n0"};
  const auto run = boot_config(config, options, {{"run/marker", "kept"}});
  INFO("console:\n" << run.console);

  CHECK(run.reported_status == 42);
  CHECK(run.lines("image-run: ") == std::vector<std::string>{"kept"});
  CHECK(run.lines("forwarded: ") == std::vector<std::string>{"TERM"});
  CHECK(run.lines("disk: ") == std::vector<std::string>{"compactor-disk-marker"});
  const auto read_back = "debugfs -R 'cat /out.txt' " + disk.string() + " 2>/dev/null";
  std::unique_ptr<FILE, decltype(&::pclose)> debugfs(::popen(read_back.c_str(), "r"), ::pclose);
  REQUIRE(debugfs);
  char written[64] = {};
  CHECK(std::fgets(written, sizeof written, debugfs.get()) != nullptr);
  CHECK(std::string(written) == "written-by-guest\n");
  CHECK(run.lines("mounted: ") ==
        std::vector<std::string>{"/proc", "/sys", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue",
                                 "/sys/fs/cgroup", "/tmp"});
  const auto eth0 = run.lines("eth0: ");
  REQUIRE(eth0.size() == 1);
  CHECK_THAT(eth0[0], Contains("inet 10.0.2.15/24"));
  REQUIRE(run.lines("lo: ").size() == 1);
  CHECK_THAT(run.lines("lo: ")[0], Contains("inet 127.0.0.1/8"));
  CHECK(contains(run.lines("route: "), "default via 10.0.2.2 dev eth0 "));
  CHECK(run.lines("zombies: ") == std::vector<std::string>{"0"});
}

TEST_CASE("guest: the PVH entry of vmlinux boots and a successful workload reports 0",
          "[qemu][needs-qemu]") {
  boot_options options;
  options.kernel = COMPACTOR_TEST_VMLINUX;
  const auto run = boot_config(shell("echo ran; exit 0"), options);
  CHECK(run.reported_status == 0);
  CHECK(run.lines("ran").size() == 1);
}

TEST_CASE("guest: a workload killed by signal N reports 128+N", "[qemu][needs-qemu]") {
  const auto run = boot_config(shell("kill -KILL $$"));
  CHECK(run.reported_status == 128 + SIGKILL);
}

TEST_CASE("guest: a program that is not executable reports 126", "[qemu][needs-qemu]") {
  guest::launch_config config;
  config.entrypoint = {"/data/plain-file"};
  const auto run = boot_config(config, {}, {{"data/plain-file", "#!/bin/sh\nexit 0\n"}});
  CHECK(run.reported_status == 126);
  CHECK_THAT(run.console, Contains("cannot execute /data/plain-file: Permission denied"));
}

TEST_CASE("guest: a program that is not on PATH reports 127", "[qemu][needs-qemu]") {
  guest::launch_config config;
  config.cmd = {"no-such-program", "argument"};
  const auto run = boot_config(config);
  CHECK(run.reported_status == 127);
  CHECK_THAT(run.console, Contains("cannot execute no-such-program: No such file or directory"));
}

TEST_CASE("guest: a failure of the init itself reports 125 with one clear line, also from an "
          "image without /dev/console",
          "[qemu][needs-qemu]") {
  auto config = shell("echo must not run");
  config.user = "nobody-here";
  const auto run = boot_config(config, {}, {}, false);
  CHECK(run.reported_status == guest::init_failure_status);
  CHECK_THAT(run.console,
             Contains("compactor-init: error: unable to find user nobody-here: no matching "
                      "entries in passwd file"));
  CHECK(run.lines("must not run").empty());
}

namespace {

// A network namespace with a tap device and the host side's address, deleted on destruction.
class tap_namespace {
public:
  tap_namespace() : name_("compactor-guest-" + std::to_string(::getpid())) {
    run("ip netns add " + name_);
    run("ip -n " + name_ + " link set lo up");
    run("ip -n " + name_ + " tuntap add dev tap0 mode tap");
    run("ip -n " + name_ + " addr add 10.77.0.1/24 dev tap0");
    run("ip -n " + name_ + " link set tap0 up");
  }
  tap_namespace(const tap_namespace&) = delete;
  tap_namespace& operator=(const tap_namespace&) = delete;
  ~tap_namespace() {
    [[maybe_unused]] const int ignored = std::system(("ip netns delete " + name_).c_str());
  }

  [[nodiscard]] const std::string& name() const { return name_; }

  // Runs `command` inside the namespace; true when it succeeds.
  [[nodiscard]] bool exec(const std::string& command) const {
    return std::system(("ip netns exec " + name_ + " " + command + " >/dev/null 2>&1").c_str()) ==
           0;
  }

private:
  void run(const std::string& command) {
    if (std::system(command.c_str()) != 0) {
      throw error("'" + command + "' failed");
    }
  }

  std::string name_;
};

} // namespace

TEST_CASE("guest: eth0 on a tap device answers pings and connections from the host side",
          "[qemu][needs-qemu][needs-root]") {
  tap_namespace namespace_;
  const auto config = shell("ping -c 1 -W 10 10.77.0.1 >/dev/null && echo ping-host: ok;"
                            "nc -l -p 5000 </dev/null && echo accepted: ok");

  // The host side pings the guest until it answers, then connects, which ends the workload.
  auto host_side = std::async(std::launch::async, [&] {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    bool pinged = false;
    while (!pinged && std::chrono::steady_clock::now() < deadline) {
      pinged = namespace_.exec("ping -c 1 -W 1 10.77.0.2");
    }
    bool connected = false;
    while (pinged && !connected && std::chrono::steady_clock::now() < deadline) {
      connected = namespace_.exec("busybox nc -w 2 10.77.0.2 5000 </dev/null");
      if (!connected) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      }
    }
    return std::pair{pinged, connected};
  });

  boot_options options;
  options.command_prefix = {"ip", "netns", "exec", namespace_.name()};
  options.extra_kernel_arguments = "compactor.ip=10.77.0.2/24 compactor.gw=10.77.0.1";
  options.extra_qemu_arguments = {
      "-netdev", "tap,id=n0,ifname=tap0,script=no,downscript=no",
      "-device", "virtio-net-device,netdev=n0"};
  options.timeout = std::chrono::seconds(70);
  const auto run = boot_config(config, options);
  const auto [pinged, connected] = host_side.get();
  INFO("console:\n" << run.console);

  CHECK(pinged);
  CHECK(connected);
  CHECK(run.lines("ping-host: ") == std::vector<std::string>{"ok"});
  CHECK(run.lines("accepted: ") == std::vector<std::string>{"ok"});
  CHECK(run.reported_status == 0);
}
