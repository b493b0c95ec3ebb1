#!/usr/bin/env bash
# `compactor run` refuses, before any guest starts, an image whose initramfs cannot unpack in
# the guest's memory (--mem-size-mb): when it has just built the initramfs and when it takes it
# from the cache. A guest that fits still boots. Every check runs against a private cache
# directory that is removed afterwards.
# Usage: guest_memory_test.sh COMPACTOR DEMO_IMAGE_DIR
set -uo pipefail
compactor=$(realpath "$1")
demo="oci:$(realpath "$2"):demo"

work=$(mktemp -d /tmp/compactor-memory-test.XXXXXX)
export XDG_CACHE_HOME="$work/cache"
trap 'rm -rf "$work"' EXIT
failures=0
passed=0

check() { # NAME EXPECTED_STATUS EXPECTED_OUTPUT_REGEX UNWANTED_OUTPUT_REGEX -- COMMAND...
  local name=$1 expected_status=$2 pattern=$3 unwanted=$4
  shift 5
  local output status
  output=$("$@" 2>&1)
  status=$?
  if [[ $status -ne $expected_status ]] || ! grep -Eq -- "$pattern" <<<"$output" ||
    { [[ -n $unwanted ]] && grep -Eq -- "$unwanted" <<<"$output"; }; then
    echo "FAIL $name: status $status (expected $expected_status), output:"
    sed 's/^/    /' <<<"$output" | tail -n 15
    failures=$((failures + 1))
  else
    echo "ok   $name"
    passed=$((passed + 1))
  fi
}

# 96 MiB of zeros: a few KiB once compressed, 96 MiB once unpacked in the guest, whose root
# file system (a tmpfs) holds half of the memory the kernel leaves free: about 220 MiB are
# needed.
truncate -s 96M "$work/zeros"
run=("$compactor" run --hypervisor qemu -v --timeout 300 "$demo")
big=(--transfer-files "$work/zeros:/zeros")
refusal="^compactor: the initramfs unpacks to (9[6-9]|1[0-9]{2}) MiB in [0-9]+ files; "
refusal+="with --mem-size-mb 64 the guest's root file system \(tmpfs, [^)]*\) holds at most "
refusal+="[0-9]+ MiB and [0-9]+ files: give --mem-size-mb (2[0-9]{2}) or more$"

check "an initramfs larger than guest memory is refused before boot" 125 "$refusal" \
  "booting with" -- "${run[@]}" "${big[@]}" --mem-size-mb 64 -- true
check "the refusal stands when the initramfs comes from the cache" 125 \
  "initramfs .* from the cache" "booting with" -- "${run[@]}" "${big[@]}" --mem-size-mb 64 -- true
check "the refusal from the cache names the sizes" 125 "$refusal" "" -- \
  "${run[@]}" "${big[@]}" --mem-size-mb 64 -- true
check "the tmpfs root's half of memory counts" 125 "give --mem-size-mb 2[0-9]{2} or more$" \
  "booting with" -- "${run[@]}" "${big[@]}" --mem-size-mb 160 -- true
if ls "$XDG_CACHE_HOME/compactor/initramfs" | grep -q '\.size\.json$'; then
  echo "ok   the cache keeps the initramfs's sizes beside it"
  passed=$((passed + 1))
else
  echo "FAIL no size record in the cache: $(ls "$XDG_CACHE_HOME/compactor/initramfs")"
  failures=$((failures + 1))
fi
check "with enough memory the same initramfs boots" 0 "^100663296$" "" -- \
  "${run[@]}" "${big[@]}" --mem-size-mb 320 -- sh -c "wc -c </zeros"
# The least memory the demo image was measured to boot in: the check must not refuse it.
check "a small image in a small guest is not refused" 0 "^small$" "" -- \
  "${run[@]}" --mem-size-mb 32 -- echo small

echo "guest memory: $passed passed, $failures failed"
[[ $failures -eq 0 ]]
