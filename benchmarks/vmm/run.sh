#!/bin/sh
# VMM benchmark: process start to probe-guest exit, our VMM against QEMU's microvm machine on
# the same ELF (QEMU enters it through PVH; ours by default too), side by side in one run,
# then our VMM's memory beyond guest RAM. The floor runs beside them: bare_kvm, a KVM program
# without our library, once bare and once with the in-kernel irqchip and PIT that ours sets up.
#
#   benchmarks/vmm/run.sh BUILD_DIR
set -eu
build=$(realpath "$1")
probe=$build/benchmarks/vmm/probe.elf
ours=$build/benchmarks/vmm/probe_boot
bare=$build/benchmarks/vmm/bare_kvm
cmdline="probe=exit status=0"
qemu_for() {
  echo "qemu-system-x86_64 -M microvm,x-option-roms=off,rtc=off -accel $1 -m 64M -nodefaults \
-no-user-config -display none -serial null -kernel $probe -append '$cmdline' \
-device isa-debug-exit,iobase=0x501,iosize=1"
}
# isa-debug-exit turns status 0 into QEMU exit code 1.
accel=kvm
status=0; timeout 20 sh -c "$(qemu_for kvm)" 2>/dev/null || status=$?
[ "$status" -eq 1 ] || accel=tcg
qemu=$(qemu_for $accel)

"$ours" "$probe" "$cmdline" || { echo "our VMM failed on the probe" >&2; exit 1; }
"$bare" --irqchip || { echo "bare_kvm failed" >&2; exit 1; }
echo "QEMU accelerator: $accel"
if command -v hyperfine >/dev/null; then
  hyperfine -N --warmup 3 --runs 30 \
    -n floor-bare-kvm "$bare --memory-mib 64" \
    -n floor-bare-kvm-irqchip-pit "$bare --irqchip --memory-mib 64" \
    -n compactor-vmm "$ours $probe '$cmdline'" \
    -n compactor-vmm-deferred-teardown "$ours $probe '$cmdline' --deferred-teardown" \
    -n qemu-microvm -i "$qemu"
else
  for name in ours qemu; do
    start=$(date +%s%N)
    for i in $(seq 20); do
      if [ $name = ours ]; then "$ours" "$probe" "$cmdline"; else sh -c "$qemu" || true; fi
    done
    echo "$name: $(( ($(date +%s%N) - start) / 20000 )) us per run"
  done
fi
"$ours" "$probe" "$cmdline" --memory-report
# Where the time goes: each step of the floor, five times.
for i in 1 2 3 4 5; do "$bare" --irqchip --memory-mib 64 --phases 2>&1 | tr -s ' ' | paste -sd ';'; done
