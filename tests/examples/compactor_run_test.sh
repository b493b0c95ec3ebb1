#!/usr/bin/env bash
# The `compactor` command end to end under QEMU: image to booted guest, exit statuses, --env,
# --transfer-files, the original --image form, the initramfs cache, SIGTERM, bad arguments.
# Every check runs against a private cache directory that is removed afterwards.
# Usage: compactor_run_test.sh COMPACTOR DEMO_IMAGE_DIR
set -uo pipefail
compactor=$(realpath "$1")
demo="oci:$(realpath "$2"):demo"

work=$(mktemp -d /tmp/compactor-run-test.XXXXXX)
export XDG_CACHE_HOME="$work/cache"
trap 'rm -rf "$work"' EXIT
failures=0
passed=0

check() { # NAME EXPECTED_STATUS EXPECTED_OUTPUT_REGEX -- COMMAND...
  local name=$1 expected_status=$2 pattern=$3
  shift 4
  local output status
  output=$("$@" 2>&1)
  status=$?
  if [[ $status -ne $expected_status ]] || ! grep -Eq -- "$pattern" <<<"$output"; then
    echo "FAIL $name: status $status (expected $expected_status), output:"
    sed 's/^/    /' <<<"$output" | tail -n 15
    failures=$((failures + 1))
  else
    echo "ok   $name"
    passed=$((passed + 1))
  fi
}

run=("$compactor" run --hypervisor qemu)

check "the demo image boots without naming an image" 0 "Hello from a Compactor micro-VM" -- \
  "${run[@]}"
check "exit status 0" 0 "" -- "${run[@]}" "$demo" -- true
check "a non-zero exit status comes back" 42 "" -- "${run[@]}" "$demo" -- sh -c 'exit 42'
check "killed by a signal is 128+N" 137 "" -- "${run[@]}" "$demo" -- sh -c 'kill -9 $$'
check "not found is 127" 127 "" -- "${run[@]}" "$demo" -- /no/such/program
check "not executable is 126" 126 "" -- "${run[@]}" "$demo" -- /etc/passwd
check "--env, several in one value" 0 "^A=1 B=two,three C=$" -- \
  "${run[@]}" "$demo" --env A=1,B=two,three --env C= -- sh -c 'echo "A=$A B=$B C=$C"'

mkdir -p "$work/data/sub"
echo "alpha" >"$work/data/a.txt"
echo "beta" >"$work/data/sub/b.txt"
check "--transfer-files copies a directory into the guest" 0 "^alpha beta$" -- \
  "${run[@]}" "$demo" --transfer-files "$work/data:/app/data" -- \
  sh -c 'echo $(cat /app/data/a.txt /app/data/sub/b.txt)'
check "the original --image form" 0 "^DEBUG=true LOG_LEVEL=info alpha$" -- \
  "$compactor" --image "$demo" --hypervisor qemu --env DEBUG=true,LOG_LEVEL=info \
  --transfer-files "$work/data:/app/data" -- \
  sh -c 'echo DEBUG=$DEBUG LOG_LEVEL=$LOG_LEVEL $(cat /app/data/a.txt)'
check "a second run takes the initramfs from the cache" 0 "initramfs .* from the cache" -- \
  "${run[@]}" -v "$demo" -- true
echo "changed" >"$work/data/a.txt"
check "a changed transferred file makes a new initramfs" 0 "^changed$" -- \
  "${run[@]}" "$demo" --transfer-files "$work/data:/app/data" -- cat /app/data/a.txt

# Bad input: one line naming what failed, status 125, nothing left in the cache's initramfs
# directory beyond what good runs made.
before=$(ls "$XDG_CACHE_HOME/compactor/initramfs" | wc -l)
check "an unknown option" 125 "^compactor: .*--bogus" -- "${run[@]}" --bogus
check "a missing transfer source" 125 "^compactor: --transfer-files: .* does not exist$" -- \
  "${run[@]}" "$demo" --transfer-files "$work/missing:/x"
check "a malformed --env" 125 "^compactor: --env" -- "${run[@]}" "$demo" --env "=x"
check "an image that does not exist" 125 "^compactor: " -- "${run[@]}" "oci:$work/nothing:demo"
check "a bad --hypervisor" 125 "expected auto, kvm or qemu" -- \
  "$compactor" run --hypervisor vmware "$demo"
after=$(ls "$XDG_CACHE_HOME/compactor/initramfs" | wc -l)
if [[ $before -ne $after ]] || ls -a "$XDG_CACHE_HOME/compactor/initramfs" | grep -q '\.tmp'; then
  echo "FAIL bad input left files in the cache"
  failures=$((failures + 1))
else
  echo "ok   bad input left nothing behind"
  passed=$((passed + 1))
fi

# -i: stdin reaches the workload through the console. Like a serial line, the console drops
# what arrives before the guest's driver is up, so the input goes once the workload says so.
mkfifo "$work/console-in"
"${run[@]}" -i "$demo" -- sh -c 'echo ready; read line; echo "got: $line"; exit 5' \
  <"$work/console-in" >"$work/console-out" 2>&1 &
pid=$!
exec 3>"$work/console-in"
for _ in $(seq 1200); do
  grep -q ready "$work/console-out" && break
  sleep 0.1
done
printf 'hello-input\n' >&3
exec 3>&-
wait "$pid"
status=$?
if [[ $status -eq 5 ]] && grep -q "^got: hello-input" "$work/console-out"; then
  echo "ok   -i feeds stdin to the guest's console"
  passed=$((passed + 1))
else
  echo "FAIL -i: status $status, output: $(tail -n 5 "$work/console-out")"
  failures=$((failures + 1))
fi

# export: the initramfs, the image alone, a tar, and no file at all when something fails.
check "export writes an initramfs with the init" 0 "^\.compactor/init$" -- \
  sh -c "'$compactor' export '$demo' -o '$work/demo.cpio.gz' --compression gzip &&
         gzip -t '$work/demo.cpio.gz' && gzip -dc '$work/demo.cpio.gz' | cpio -t --quiet"
check "export --rootfs-only leaves the init out" 0 "^bin/busybox$" -- \
  sh -c "'$compactor' export '$demo' --rootfs-only -o '$work/rootfs.cpio' --compression none &&
         cpio -t --quiet <'$work/rootfs.cpio' | grep -v compactor"
check "export --format tar" 0 "^bin/busybox$" -- \
  sh -c "'$compactor' export '$demo' --format tar --compression none -o '$work/demo.tar' &&
         tar -tf '$work/demo.tar'"
check "export with a missing transfer source fails before anything is written" 125 \
  "^compactor: --transfer-files: .* does not exist$" -- \
  "$compactor" export "$demo" -o "$work/never.cpio" --transfer-files "$work/missing:/x"
check "export refuses a loopback --dns" 125 "loopback resolver" -- \
  "$compactor" export "$demo" -o "$work/never.cpio" --dns 127.0.0.53
if [[ -e $work/never.cpio ]] || ls "$work" | grep -q '\.tmp'; then
  echo "FAIL a failed export left a file"
  failures=$((failures + 1))
else
  echo "ok   a failed export leaves no file"
  passed=$((passed + 1))
fi

# SIGTERM: the guest stops, compactor exits 143, no QEMU is left.
"${run[@]}" "$demo" -- sleep 600 >"$work/sleep.log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  pgrep -P "$pid" -f qemu-system >/dev/null && break
  sleep 0.1
done
sleep 1
kill -TERM "$pid"
wait "$pid"
status=$?
if [[ $status -eq 143 ]] && ! pgrep -f "qemu-system.*$XDG_CACHE_HOME" >/dev/null; then
  echo "ok   SIGTERM stops the guest with status 143 and leaves no QEMU"
  passed=$((passed + 1))
else
  echo "FAIL SIGTERM: status $status; $(pgrep -af qemu-system | head -n 2)"
  failures=$((failures + 1))
fi

echo "compactor run: $passed passed, $failures failed"
[[ $failures -eq 0 ]]
