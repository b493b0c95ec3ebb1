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
trap 'rm -rf "$work"' EXIT
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
cd /tmp
sh /test-script.sh
echo "NESTED-RUN-EXIT-STATUS: $?"
poweroff -f
INIT
chmod +x "$root/init"

(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$work/l1.cpio.gz"

console="$work/console.log"
# L1 (KVM on QEMU's emulated AMD-V) has been seen to stop responding as a guest VM starts, a
# few times in a hundred VM starts, with nothing of ours left running in it to blame. A run that
# L1 never finishes (the timeout) is started once more from a fresh boot, and says so; a second
# stall, or any status L1 reports, stands.
for attempt in 1 2; do
  status=0
  timeout --kill-after=10 "$timeout_seconds" qemu-system-x86_64 \
    -accel tcg -cpu max -smp 2 -m "$memory_mib" \
    -nographic -no-reboot -nodefaults -serial stdio \
    -kernel "$kernel" -initrd "$work/l1.cpio.gz" \
    -append "console=ttyS0 quiet panic=-1 rdinit=/init" </dev/null | tee "$console" || status=$?
  if marker=$(grep -a -o 'NESTED-RUN-EXIT-STATUS: [0-9]*' "$console" | tail -n1); then
    exit "${marker##* }"
  fi
  echo "nested-run: L1 ended without reporting a status (qemu exit $status)" >&2
  if ((attempt == 1 && (status == 124 || status == 137))); then
    echo "nested-run: L1 stopped responding; booting it once more" >&2
    continue
  fi
  exit 3
done
exit 3
