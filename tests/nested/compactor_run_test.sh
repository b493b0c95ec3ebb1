#!/usr/bin/env bash
# `compactor run --hypervisor kvm` end to end on our VMM, inside the nested harness's L1:
# exit statuses, --env, --transfer-files, the original --image form, a second run that takes
# the initramfs from the cache, two vCPUs, the kernel as bzImage, and the network: a tap that
# compactor creates in L1, the guest's eth0 configured by the init, ping and TCP from the guest
# through Linux's virtio-net driver and our device to L1.
# Usage: compactor_run_test.sh COMPACTOR DEMO_IMAGE_DIR BZIMAGE
set -euo pipefail
compactor=$(realpath "$1")
demo_dir=$(realpath "$2")
bzimage=$(realpath "$3")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/compactor-nested-run.XXXXXX)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/data"
echo "transferred" >"$work/data/file.txt"
cat >"$work/l1.sh" <<SCRIPT
export XDG_CACHE_HOME=/tmp/cache
run() { $compactor run --hypervisor kvm --mem-size-mb 256 --timeout 240 "\$@"; }
demo=oci:$demo_dir:demo
run; echo "demo: status \$?"
run \$demo -- sh -c 'exit 42'; echo "exit: status \$?"
run \$demo -- sh -c 'kill -9 \$\$'; echo "signal: status \$?"
run \$demo --env A=1,B=2 -- sh -c 'echo "env: A=\$A B=\$B"'
run \$demo --transfer-files $work/data:/app/data -- cat /app/data/file.txt
$compactor --image \$demo --hypervisor kvm --env LEGACY=yes -- sh -c 'echo "legacy: \$LEGACY"'
run -v \$demo --env A=1,B=2 -- sh -c 'echo "env: A=\$A B=\$B"' 2>&1 | grep -c 'from the cache' | sed 's/^/cache hits: /'
# The input goes once the workload says it is ready: the console drops what comes earlier.
mkfifo /tmp/console-in
run -i \$demo -- sh -c 'echo ready; read line; echo "got: \$line"; exit 5' </tmp/console-in >/tmp/console-out 2>&1 &
exec 3>/tmp/console-in
for i in \$(seq 3000); do grep -q ready /tmp/console-out && break; sleep 0.1; done
printf 'hello-input\\n' >&3
exec 3>&-
wait \$!
echo "interactive: status \$?"
cat /tmp/console-out
run --num-vcpus 2 \$demo -- sh -c 'echo "cpus: \$(grep -c ^processor /proc/cpuinfo)"'
run --kernel $bzimage \$demo -- sh -c 'echo "bzImage: booted"'
# The tap appears when compactor starts; L1 takes 10.0.2.1 on it while the guest boots.
(for i in \$(seq 600); do
   if ip link show tap0 >/dev/null 2>&1; then
     ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up; break
   fi
   sleep 0.1
 done) &
(nc -l -p 7000 >/tmp/received) &
run --tap tap0 --ip 10.0.2.15/24 --gateway 10.0.2.1 \$demo -- sh -c \
  'echo "offload csum bit: \$(busybox cut -c1 /sys/class/net/eth0/device/features)"; busybox ping -c 2 -W 5 10.0.2.1 >/dev/null && echo "ping: answered"; echo over-tcp | busybox nc 10.0.2.1 7000'
echo "network: status \$?"
sleep 1
echo "tcp: \$(cat /tmp/received)"
# The same without offloads: the guest's driver then checksums every frame itself.
(for i in \$(seq 600); do
   if ip link show tap0 >/dev/null 2>&1; then
     ip addr add 10.0.2.1/24 dev tap0; ip link set tap0 up; break
   fi
   sleep 0.1
 done) &
(nc -l -p 7001 >/tmp/received-plain) &
run --tap tap0 --no-net-offload --ip 10.0.2.15/24 \$demo -- sh -c \
  'echo "plain csum bit: \$(busybox cut -c1 /sys/class/net/eth0/device/features)"; busybox ping -c 2 -W 5 10.0.2.1 >/dev/null && echo "plain ping: answered"; echo plain-tcp | busybox nc 10.0.2.1 7001'
sleep 1
echo "plain tcp: \$(cat /tmp/received-plain)"
ip link show tap0 >/dev/null 2>&1 && echo "tap: left behind" || echo "tap: removed"
SCRIPT

output=$("$here/nested-run.sh" --timeout 420 --file "$compactor" --file "$demo_dir" \
  --file "$bzimage" --file "$work/data" "$work/l1.sh" 2>&1) || true
echo "$output" | tr -d '\r' | grep -a -v '^\s*$' | grep -a -v 'Unhandled WRMSR' | tail -n 30

failures=0
expect() {
  if grep -a -q -- "$1" <<<"$(tr -d '\r' <<<"$output")"; then
    echo "ok   $1"
  else
    echo "FAIL expected '$1' in L1's output"
    failures=$((failures + 1))
  fi
}
expect "Hello from a Compactor micro-VM"
expect "demo: status 0"
expect "exit: status 42"
expect "signal: status 137"
expect "env: A=1 B=2"
expect "^transferred"
expect "legacy: yes"
expect "cache hits: 1"
expect "got: hello-input"
expect "interactive: status 5"
expect "cpus: 2"
expect "bzImage: booted"
expect "ping: answered"
expect "network: status 0"
expect "tcp: over-tcp"
expect "offload csum bit: 1"
expect "plain csum bit: 0"
expect "plain ping: answered"
expect "plain tcp: plain-tcp"
expect "tap: removed"
[[ $failures -eq 0 ]]
