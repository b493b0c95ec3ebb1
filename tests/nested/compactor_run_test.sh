#!/usr/bin/env bash
# `compactor run --hypervisor kvm` end to end on our VMM, inside the nested harness's L1:
# exit statuses, --env, --transfer-files, the original --image form, and a second run that
# takes the initramfs from the cache.
# Usage: compactor_run_test.sh COMPACTOR DEMO_IMAGE_DIR
set -euo pipefail
compactor=$(realpath "$1")
demo_dir=$(realpath "$2")
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
SCRIPT

output=$("$here/nested-run.sh" --timeout 600 --file "$compactor" --file "$demo_dir" \
  --file "$work/data" "$work/l1.sh" 2>&1) || true
echo "$output" | tr -d '\r' | grep -a -v '^\s*$' | tail -n 25

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
[[ $failures -eq 0 ]]
