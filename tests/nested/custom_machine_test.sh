#!/usr/bin/env bash
# The custom-machine example inside the nested harness's L1: its own device set (console, exit
# port, two virtio-blk disks, the second read-only) boots the bundled kernel, and the guest sees
# both disks with the right modes.
# Usage: custom_machine_test.sh CUSTOM_MACHINE VMLINUX GUEST_INIT
set -euo pipefail
program=$(realpath "$1")
vmlinux=$(realpath "$2")
guest_init=$(realpath "$3")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/compactor-nested-custom.XXXXXX)
trap 'rm -rf "$work"' EXIT

"$here/make-guest-initramfs.sh" "$work/initrd.gz" "$guest_init" \
  '{"version":1,"entrypoint":["/bin/sh","-c"],"cmd":["echo vda $(head -c 4 /dev/vda) ro=$(cat /sys/block/vda/ro); echo vdb $(head -c 4 /dev/vdb) ro=$(cat /sys/block/vdb/ro); exit 9"],"env":["PATH=/bin"],"workdir":"","user":"","hostname":""}' \
  "sh cat head"
{ printf 'DSK0'; head -c 65532 /dev/zero; } >"$work/disk0.img"
{ printf 'DSK1'; head -c 65532 /dev/zero; } >"$work/disk1.img"

cat >"$work/l1.sh" <<SCRIPT
$program $vmlinux $work/initrd.gz $work/disk0.img $work/disk1.img \
  "console=ttyS0 panic=-1 quiet rdinit=/.compactor/init"
echo "custom machine: status \$?"
SCRIPT
output=$("$here/nested-run.sh" --timeout 300 --file "$program" --file "$vmlinux" \
  --file "$work" "$work/l1.sh" 2>&1 | tr -d '\r') || true
grep -a -E 'vda|vdb|custom machine' <<<"$output" || true
grep -a -q 'vda DSK0 ro=0' <<<"$output"
grep -a -q 'vdb DSK1 ro=1' <<<"$output"
grep -a -q 'custom machine: status 9' <<<"$output"
echo "custom-machine booted Linux with two disks, the second read-only"
