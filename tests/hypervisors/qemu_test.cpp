#include <catch2/catch.hpp>

#include <algorithm>

#include <compactor/hypervisors/console_status_filter.hpp>
#include <compactor/hypervisors/qemu.hpp>

using namespace compactor::hypervisors;

TEST_CASE("console filter: the status line is taken out and decoded", "[unit]") {
  console_status_filter filter;
  std::string shown = filter.feed("hello\r\ncompactor-init: exit status 137\r\n");
  shown += filter.finish();

  CHECK(shown == "hello\r\n");
  CHECK(filter.status() == 137);
}

TEST_CASE("console filter: output passes through at once, also split across chunks",
          "[unit]") {
  console_status_filter filter;
  CHECK(filter.feed("prompt> ") == "prompt> ");
  CHECK(filter.feed("\ncompactor-in") == "\n"); // the rest could still be the status line
  CHECK(filter.feed("it: exit st") == "");
  CHECK(filter.feed("atus 3\n") == "");
  CHECK(filter.feed("after\n") == "after\n");
  CHECK(filter.status() == 3);
}

TEST_CASE("console filter: lines that only look like the status line are shown", "[unit]") {
  console_status_filter filter;
  std::string shown;
  shown += filter.feed("compactor-init: exit status soon\n");
  shown += filter.feed("compactor-init: exit status 999\n");
  shown += filter.feed("say compactor-init: exit status 1\n");
  shown += filter.feed("compactor");
  shown += filter.finish();

  CHECK(shown == "compactor-init: exit status soon\ncompactor-init: exit status 999\n"
                 "say compactor-init: exit status 1\ncompactor");
  CHECK_FALSE(filter.status());
}

TEST_CASE("qemu exit code: isa-debug-exit's encoding keeps seven bits", "[unit]") {
  CHECK(status_from_qemu_exit_code(1) == 0);
  CHECK(status_from_qemu_exit_code(3) == 1);
  CHECK(status_from_qemu_exit_code((127 << 1) | 1) == 127);
  CHECK_FALSE(status_from_qemu_exit_code(0));
}

TEST_CASE("qemu arguments: microvm with the exit device, disks and a tap", "[unit]") {
  guest_spec spec;
  spec.kernel = "/k/vmlinux";
  spec.initrd = "/k/initrd";
  spec.guest_parameters = "rdinit=/.compactor/init";
  spec.disks = {{"/d/a.img", false}, {"/d/b.img", true}};
  spec.tap = "tap0";
  spec.memory_mib = 256;

  const auto arguments = qemu_arguments(spec, false, "qemu-system-x86_64");
  const auto has = [&](const std::string& value) {
    return std::find(arguments.begin(), arguments.end(), value) != arguments.end();
  };

  CHECK(has("tcg"));
  CHECK(has("256"));
  CHECK(has("isa-debug-exit,iobase=0x501,iosize=1"));
  CHECK(has("id=disk1,file=/d/b.img,format=raw,if=none,readonly=on"));
  CHECK(has("tap,id=net0,ifname=tap0,script=no,downscript=no"));
  CHECK(has("console=ttyS0 reboot=t panic=-1 quiet rdinit=/.compactor/init"));
  CHECK(std::count(arguments.begin(), arguments.end(), "-device") == 4);
}

TEST_CASE("console filter: for a file or pipe, lines end in a plain newline", "[unit]") {
  console_status_filter filter(true);
  std::string shown = filter.feed("one\r\ntwo\r");
  shown += filter.feed("\nthree\rback\r\ncompactor-init: exit status 5\r\n");
  shown += filter.finish();
  CHECK(shown == "one\ntwo\nthree\rback\n");
  CHECK(filter.status() == 5);
}
