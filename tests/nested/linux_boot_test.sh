#!/usr/bin/env bash
# Linux under our VMM: inside the nested harness's L1, `compactor boot --hypervisor kvm` boots
# the bundled kernel with an initramfs of the guest init and busybox, and a virtio-blk disk.
# The workload reads the disk, writes a sector, and exits with a known status; a second run
# with the disk read-only must have its write refused. Checks that the status comes back, the
# guest saw the disk's bytes, and the write reached the file only when allowed.
# Usage: linux_boot_test.sh COMPACTOR VMLINUX GUEST_INIT
set -euo pipefail
compactor=$(realpath "$1")
vmlinux=$(realpath "$2")
guest_init=$(realpath "$3")
here=$(cd "$(dirname "$0")" && pwd)

work=$(mktemp -d /tmp/compactor-nested-linux.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The guest's initramfs: the workload is check.sh.
cat >"$work/check.sh" <<'CHECK'
#!/bin/sh
echo "disk sectors $(cat /sys/block/vda/size)"
echo "disk head $(head -c 16 /dev/vda)"
if printf 'written-by-linux' | dd of=/dev/vda bs=512 seek=1 conv=notrunc,fsync 2>/dev/null; then
  exit 7
fi
echo "write refused"
exit 8
CHECK
chmod +x "$work/check.sh"
"$here/make-guest-initramfs.sh" "$work/initrd.gz" "$guest_init" \
  '{"version":1,"entrypoint":["/check.sh"],"cmd":[],"env":["PATH=/bin"],"workdir":"","user":"","hostname":""}' \
  "sh cat head dd echo printf sync" "$work/check.sh:check.sh"

# A 64 KiB disk whose first bytes the guest must see.
{ printf 'compactor-disk-0'; head -c $((64 * 1024 - 16)) /dev/zero; } >"$work/disk.img"

cat >"$work/l1.sh" <<SCRIPT
boot() {
  $compactor boot --hypervisor kvm --mem-size-mb 256 --timeout 240 \\
    --disk "\$1" $vmlinux $work/initrd.gz --append rdinit=/.compactor/init
}
cp $work/disk.img /tmp/rw.img
boot /tmp/rw.img
echo "read-write run: status \$?"
echo "sector 1 after the read-write run: \$(dd if=/tmp/rw.img bs=512 skip=1 count=1 2>/dev/null | head -c 16)"
cp $work/disk.img /tmp/ro.img
boot /tmp/ro.img:ro
echo "read-only run: status \$?"
echo "sector 1 after the read-only run: [\$(dd if=/tmp/ro.img bs=512 skip=1 count=1 2>/dev/null | tr -d '\\\\0' | head -c 16)]"
SCRIPT

output=$("$here/nested-run.sh" --timeout 420 --file "$compactor" --file "$vmlinux" \
  --file "$work/initrd.gz" --file "$work/disk.img" "$work/l1.sh" 2>&1) || true
echo "$output" | grep -a -v '^\s*$' | tail -n 30

expect() {
  if ! grep -a -q -- "$1" <<<"$output"; then
    echo "FAILED: expected '$1' in L1's output"
    exit 1
  fi
}
expect "disk sectors 128"
expect "disk head compactor-disk-0"
expect "read-write run: status 7"
expect "sector 1 after the read-write run: written-by-linux"
expect "write refused"
expect "read-only run: status 8"
expect "sector 1 after the read-only run: \[\]"
echo "Linux booted under our VMM twice: disk read, written, and refused when read-only"
