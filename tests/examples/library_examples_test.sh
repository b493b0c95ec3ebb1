#!/usr/bin/env bash
# The library examples do what their comments say: export-only writes the demo image's file
# system as a cpio (and a tar), minimal-run boots the demo image under QEMU.
# Usage: library_examples_test.sh BUILD_DIR
set -euo pipefail
build=$(realpath "$1")
demo="oci:$build/examples/demo-image:demo"
work=$(mktemp -d /tmp/compactor-examples-test.XXXXXX)
trap 'rm -rf "$work"' EXIT
export XDG_CACHE_HOME="$work/cache"

"$build/examples/export-only" "$demo" "$work/demo.cpio.zst"
zstd -dc "$work/demo.cpio.zst" | cpio -t --quiet | grep -x 'bin/busybox' >/dev/null
"$build/examples/export-only" "$demo" "$work/demo.tar.zst" tar
zstd -dc "$work/demo.tar.zst" | tar -t | grep -x 'bin/busybox' >/dev/null
echo "export-only wrote a cpio and a tar with bin/busybox"

output=$("$build/examples/minimal-run" "$demo" "$build/kernel/vmlinux")
grep -q "Hello from a Compactor micro-VM" <<<"$output"
echo "minimal-run booted the demo image"
