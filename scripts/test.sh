#!/usr/bin/env bash
# README's test command: from a fresh Debian 12 machine to the whole test suite run. Installs
# what is missing, builds with warnings as errors, starts the test services (dockerd and a
# registry, each its own, on a socket and a loopback port), runs every meson test, and stops the
# services again whatever happens. Arguments go to `meson test` (e.g. --suite unit).
#
# Then the same tests run again from a second build under AddressSanitizer, LeakSanitizer and
# UndefinedBehaviorSanitizer (build-sanitize), against the same services; any finding fails the
# test that met it. COMPACTOR_SKIP_SANITIZE=1 skips that stage.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=build
sanitize_dir=build-sanitize

scripts/configure-and-build.sh "$build_dir"

stop_services() { scripts/test-services.sh stop "$build_dir"; }
trap stop_services EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
service_variables=$(scripts/test-services.sh start "$build_dir")
eval "$service_variables"

# A run that selects no test writes no log: an old one must not be counted.
rm -f "$build_dir/meson-logs/testlog.json" "$sanitize_dir/meson-logs/testlog.json"
status=0
meson test -C "$build_dir" --print-errorlogs "$@" || status=$?

# Prints "PASSED FAILED SKIPPED" for a build directory's last `meson test`.
count_results() {
  python3 - "$1/meson-logs/testlog.json" <<'SUMMARY'
import json, os, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0}
with open(sys.argv[1] if os.path.exists(sys.argv[1]) else os.devnull) as log:
    for line in log:
        result = json.loads(line)["result"]
        key = result if result in counts else "FAIL" if result != "EXPECTEDFAIL" else "OK"
        counts[key] += 1
print(counts["OK"], counts["FAIL"], counts["SKIP"])
SUMMARY
}
read -r passed failed skipped < <(count_results "$build_dir")
summaries=("tests ($build_dir): $passed passed, $failed failed, $skipped skipped")

if [[ ${COMPACTOR_SKIP_SANITIZE:-0} != 1 ]]; then
  sanitize_status=0
  scripts/build-sanitized.sh "$sanitize_dir" || sanitize_status=$?
  # The nested harness boots the cloud kernel that install-dependencies.sh unpacked.
  mkdir -p "$sanitize_dir/nested"
  ln -sfn "$(realpath "$build_dir/nested/cloud-kernel")" "$sanitize_dir/nested/cloud-kernel"
  if ((sanitize_status == 0)); then
    # Findings end the program with status 86 (unlikely to be a status a test expects) and a
    # stack trace on stderr. The fuzz suite is not built here: its fuzzers carry ASan already.
    # Nested runs take our programs into an L1 VM, where these variables do not reach (the
    # sanitizers' defaults there: leaks checked, exit status 1).
    # quarantine_size_mb=64 (of 256): a test bounds the flattener's peak memory.
    common=halt_on_error=1:exitcode=86:print_stacktrace=1
    asan=$common:detect_leaks=1:detect_stack_use_after_return=1:check_initialization_order=1
    asan+=:strict_init_order=1:quarantine_size_mb=64
    ASAN_OPTIONS=$asan UBSAN_OPTIONS=$common \
      meson test -C "$sanitize_dir" --no-rebuild --print-errorlogs "$@" || sanitize_status=$?
    read -r s_passed s_failed s_skipped < <(count_results "$sanitize_dir")
  else
    echo "test.sh: the sanitized build in $sanitize_dir failed; its tests did not run" >&2
    s_passed=0 s_failed=1 s_skipped=0
  fi
  summaries+=("tests ($sanitize_dir, ASan+UBSan): $s_passed passed, $s_failed failed, \
$s_skipped skipped")
  ((status != 0)) || status=$sanitize_status
  passed=$((passed + s_passed)) failed=$((failed + s_failed)) skipped=$((skipped + s_skipped))
fi

# One closing line that any CI can read: "tests: N passed, N failed, N skipped" (all stages).
printf '%s\n' "${summaries[@]}"
echo "tests: $passed passed, $failed failed, $skipped skipped"
exit "$status"
