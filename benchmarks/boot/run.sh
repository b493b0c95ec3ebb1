#!/usr/bin/env bash
# Boot benchmark: the bundled kernel and a minimal initramfs (the guest init running `true`)
# booted by our VMM and by QEMU microvm, both on KVM with hardware virtualization, side by side
# in one run. On machines without vmx/svm this runs inside the nested harness's L1 (QEMU TCG
# emulating AMD-V), where absolute times mean little: compare the ratio.
#
#   benchmarks/boot/run.sh BUILD_DIR [RUNS]
set -euo pipefail
build=$(realpath "$1")
runs=${2:-5}
here=$(cd "$(dirname "$0")" && pwd)
compactor="$build/examples/compactor"
vmlinux="$build/kernel/vmlinux"
work=$(mktemp -d /tmp/compactor-boot-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT

export XDG_CACHE_HOME="$work/cache"
"$compactor" export "oci:$build/examples/demo-image:demo" -o "$work/initrd.cpio.zst" -- true

qemu=$(command -v qemu-system-x86_64)
cat >"$work/bench.sh" <<SCRIPT
boot() {
  $compactor boot --hypervisor \$1 --mem-size-mb 256 $vmlinux $work/initrd.cpio.zst \\
    --append rdinit=/.compactor/init >/dev/null 2>&1
}
now() { cat /proc/uptime | cut -d' ' -f1 | tr -d .; }  # centiseconds
for hypervisor in kvm qemu kvm qemu; do
  start=\$(now)
  for n in \$(seq $runs); do boot \$hypervisor || echo "boot failed: \$hypervisor"; done
  end=\$(now)
  echo "BENCH \$hypervisor \$(( (end - start) * 10 / $runs )) ms per boot"
done
SCRIPT

if "$compactor" host-check >/dev/null; then
  output=$(PATH="$(dirname "$qemu"):$PATH" bash "$work/bench.sh")
  where="this machine"
else
  output=$("$here/../../tests/nested/nested-run.sh" --timeout 900 --file "$compactor" \
    --file "$vmlinux" --file "$work/initrd.cpio.zst" --file "$qemu" \
    --file /usr/share/qemu "$work/bench.sh" 2>&1)
  where="the nested harness's L1 (QEMU TCG with emulated AMD-V)"
fi
grep -a -E '^BENCH|failed' <<<"$output" | tr -d '\r'
ours=$(grep -a '^BENCH kvm' <<<"$output" | tail -n1 | awk '{print $3}')
theirs=$(grep -a '^BENCH qemu' <<<"$output" | tail -n1 | awk '{print $3}')
echo "boot to workload exit in $where: our VMM ${ours} ms, QEMU microvm ${theirs} ms," \
  "ratio $(awk -v a="$theirs" -v b="$ours" 'BEGIN { printf "%.1f", a / b }')x"
