#!/usr/bin/env bash
# A small guest initramfs for the nested tests: busybox with the given applets, the guest init
# at /.compactor/init, root in /etc/passwd and /etc/group, the launch configuration, and any
# extra files. (`compactor export` makes initramfs from images; these tests want one without
# the command in the way.)
# Usage: make-guest-initramfs.sh OUTPUT.gz GUEST_INIT LAUNCH_JSON "APPLET..." [FILE:GUEST_PATH...]
set -euo pipefail
output=$1 guest_init=$2 launch=$3 applets=$4
shift 4
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT

mkdir -p "$root"/{bin,etc,.compactor}
cp "$(command -v busybox)" "$root/bin/busybox"
for applet in $applets; do ln -s busybox "$root/bin/$applet"; done
cp "$guest_init" "$root/.compactor/init"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
printf '%s' "$launch" >"$root/.compactor/launch"
for extra in "$@"; do
  install -D "${extra%%:*}" "$root/${extra#*:}"
done
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$output"
