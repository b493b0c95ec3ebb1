#!/usr/bin/env bash
# The nested harness: runs a script inside an "L1" Linux VM that offers KVM with real hardware
# virtualization, even on a host without vmx/svm.
#
# L1 is Debian's cloud kernel booted by QEMU under TCG with `-cpu max`, which emulates AMD-V;
# its kvm and kvm-amd modules then give a /dev/kvm on which our VMM can boot Linux guests.
# The L1 initramfs holds busybox, those modules, the given files (programs with the shared
# libraries they load) and the script. The script's exit status comes back over L1's console
# as a marker line and becomes this command's exit status.
#
# Usage: nested-run.sh [--timeout SECONDS] [--memory MIB] [--file PATH]... SCRIPT
#   --file PATH     copy PATH (a file or a directory) into L1 at the same path (programs
#                   bring their libraries)
#   SCRIPT          a shell script (busybox sh) run inside L1 as root
# Needs: build/nested/cloud-kernel (scripts/install-dependencies.sh unpacks it),
# qemu-system-x86_64, busybox (busybox-static), cpio.
set -euo pipefail

timeout_seconds=600
memory_mib=2048
files=()
while [[ $# -gt 1 ]]; do
  case $1 in
  --timeout) timeout_seconds=$2; shift 2 ;;
  --memory) memory_mib=$2; shift 2 ;;
  --file) files+=("$2"); shift 2 ;;
  *) echo "nested-run: unknown option $1" >&2; exit 2 ;;
  esac
done
script=${1:?usage: nested-run.sh [--timeout S] [--memory MIB] [--file PATH]... SCRIPT}

here=$(cd "$(dirname "$0")" && pwd)
build_dir=${COMPACTOR_BUILD_DIR:-$here/../../build}
kernel_root="$build_dir/nested/cloud-kernel"
kernel=$(ls "$kernel_root"/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
if [[ -z $kernel ]]; then
  echo "nested-run: no cloud kernel in $kernel_root (run scripts/install-dependencies.sh)" >&2
  exit 2
fi
release=${kernel##*/vmlinuz-}
modules="$kernel_root/lib/modules/$release/kernel"

work=$(mktemp -d /tmp/compactor-nested.XXXXXX)
# Whatever ends this script, no QEMU is left running.
trap 'if [[ -s $work/qemu.pid ]]; then kill -9 "$(cat "$work/qemu.pid")" 2>/dev/null || true; fi; rm -rf "$work"' EXIT
root="$work/root"
mkdir -p "$root"/{bin,sbin,proc,sys,dev,tmp,run,modules,etc}

cp "$(command -v busybox)" "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [[ -e $root/bin/$applet ]] || ln -s busybox "$root/bin/$applet"
done

# Modules in load order: kvm needs irqbypass; tun is for tap devices.
for module in virt/lib/irqbypass arch/x86/kvm/kvm arch/x86/kvm/kvm-amd drivers/net/tun; do
  cp "$modules/$module.ko" "$root/modules/"
done

copy_with_libraries() { # PATH: the file, and for a dynamic program its loader and libraries
  local path=$1
  mkdir -p "$root$(dirname "$path")"
  if [[ -d $path ]]; then
    cp -a "$path" "$root$path"
    return
  fi
  cp -L "$path" "$root$path"
  if [[ -x $path ]] && ldd "$path" >/dev/null 2>&1; then
    ldd "$path" | grep -o '/[^ ]*' | while read -r library; do
      mkdir -p "$root$(dirname "$library")"
      cp -L "$library" "$root$library"
    done
  fi
}
for file in "${files[@]}"; do
  copy_with_libraries "$(realpath "$file")"
  # Keep the path the caller used too, when it differs (a relative or linked path).
  absolute=$(cd "$(dirname "$file")" && pwd)/$(basename "$file")
  if [[ $absolute != "$(realpath "$file")" ]]; then
    mkdir -p "$root$(dirname "$absolute")"
    ln -sf "$(realpath "$file")" "$root$absolute"
  fi
done
cp "$script" "$root/test-script.sh"
# See kvm_vm_holder.cpp: one idle VM held open for L1's lifetime keeps L1 from rewriting a jump
# in its scheduler at every guest start and end, which QEMU's TCG has been seen to get wrong.
# NESTED_RUN_NO_HOLDER=1 leaves it out (to see the stall it prevents).
holder="$build_dir/tests/nested/kvm-vm-holder"
if [[ ${NESTED_RUN_NO_HOLDER:-0} != 1 ]]; then
  if [[ ! -x $holder ]]; then
    echo "nested-run: no $holder (build the project first)" >&2
    exit 2
  fi
  copy_with_libraries "$(realpath "$holder")"
  ln -s "$(realpath "$holder")" "$root/kvm-vm-holder"
fi

cat >"$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# /tmp and /run stay on the initramfs (writable already): files copied in under /tmp stay seen.
for module in irqbypass kvm kvm-amd tun; do
  insmod /modules/$module.ko || echo "nested-run: insmod $module failed"
done
ip link set lo up
if [ -e /kvm-vm-holder ]; then
  /kvm-vm-holder >/run/kvm-vm-holder.log 2>&1 &
  waited=0
  until grep -q holding /run/kvm-vm-holder.log || [ $waited -ge 100 ]; do
    sleep 0.1
    waited=$((waited + 1))
  done
  grep -q holding /run/kvm-vm-holder.log ||
    { echo "nested-run: kvm-vm-holder did not start:"; cat /run/kvm-vm-holder.log; }
fi
# Once per kernel, the kernel's function addresses go out on the second serial port for
# describe-l1.py (its packaged System.map is a stub); nokaslr keeps them for later boots.
if [ -e /capture-symbols ]; then grep -i ' t ' /proc/kallsyms >/dev/ttyS1; fi
cd /tmp
sh /test-script.sh
echo "NESTED-RUN-EXIT-STATUS: $?"
poweroff -f
INIT
chmod +x "$root/init"

symbols="$build_dir/nested/l1-symbols-$release"
[[ -s $symbols ]] || touch "$root/capture-symbols"
# The bundled guest kernel's symbols, for a stall met while L1 runs one of our guests.
guest_symbols="$build_dir/nested/guest-symbols"
if [[ -f $build_dir/kernel/vmlinux && ! $guest_symbols -nt $build_dir/kernel/vmlinux ]]; then
  nm "$build_dir/kernel/vmlinux" >"$guest_symbols.tmp.$$" && mv "$guest_symbols.tmp.$$" "$guest_symbols"
fi
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/l1.cpio.gz"

console="$work/console.log"
monitor="$work/monitor.sock"
# L1 (KVM on QEMU's emulated AMD-V) was seen to stop responding as a guest VM started or ended,
# a few times in a hundred VM starts, before kvm-vm-holder was added. Should it happen again:
# when a run passes its time, QEMU's monitor is first asked where L1's vCPUs are
# (describe-l1.py; NESTED_RUN_DUMP names a file for the whole answers), then the run is started
# once more from a fresh boot, and says so; a second stall, or any status L1 reports, stands.
for attempt in 1 2; do
  rm -f "$work/qemu.pid" "$work/timed-out" "$monitor"
  qemu-system-x86_64 \
    -accel tcg -cpu max -smp 2 -m "$memory_mib" \
    -nographic -no-reboot -nodefaults -serial stdio \
    -serial "file:$work/symbols" \
    -monitor "unix:$monitor,server=on,wait=off" -pidfile "$work/qemu.pid" \
    -kernel "$kernel" -initrd "$work/l1.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1 nokaslr rdinit=/init" </dev/null | tee "$console" &
  pipeline=$!
  (
    trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
    sleep "$timeout_seconds" &
    sleeper=$!
    wait "$sleeper"
    touch "$work/timed-out"
    echo "nested-run: L1 passed its ${timeout_seconds} s" >&2
    "$here/describe-l1.py" "$monitor" "$symbols" "$guest_symbols" \
      ${NESTED_RUN_DUMP:+"$NESTED_RUN_DUMP"} >&2
    kill -9 "$(cat "$work/qemu.pid")" 2>/dev/null
  ) </dev/null &
  watchdog=$!
  status=0
  wait "$pipeline" || status=$?
  if [[ ! -s $symbols ]] && tr -d '\r' <"$work/symbols" >"$symbols.tmp.$$" &&
    grep -q -i ' t _stext$' "$symbols.tmp.$$"; then
    mv "$symbols.tmp.$$" "$symbols"
  fi
  rm -f "$symbols.tmp.$$"
  kill "$watchdog" 2>/dev/null && wait "$watchdog" 2>/dev/null || true
  if marker=$(grep -a -o 'NESTED-RUN-EXIT-STATUS: [0-9]*' "$console" | tail -n1); then
    exit "${marker##* }"
  fi
  echo "nested-run: L1 ended without reporting a status (qemu exit $status)" >&2
  if [[ $attempt == 1 && -e $work/timed-out ]]; then
    echo "nested-run: L1 stopped responding; booting it once more" >&2
    continue
  fi
  exit 3
done
exit 3
