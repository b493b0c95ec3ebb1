#!/usr/bin/env bash
# Inside the nested harness's L1, KVM has hardware virtualization, and `compactor host-check`
# must say that Linux guests can boot there (exit status 0).
# Usage: host_check_test.sh COMPACTOR
set -euo pipefail
compactor=$(realpath "$1")
here=$(cd "$(dirname "$0")" && pwd)
script=$(mktemp)
trap 'rm -f "$script"' EXIT
cat >"$script" <<SCRIPT
$compactor host-check
SCRIPT

output=$("$here/nested-run.sh" --timeout 150 --file "$compactor" "$script" 2>&1) || {
  echo "$output" | tail -n 20
  echo "host-check inside L1 failed"
  exit 1
}
grep -q 'hardware virtualization: AMD-V (svm)' <<<"$output"
grep -q 'Linux guests can boot under KVM here.' <<<"$output"
echo "host-check inside L1: AMD-V, Linux guests can boot"
