#!/usr/bin/env bash
# README's test command: from a fresh Debian 12 machine to the whole test suite run. Installs
# what is missing, builds with warnings as errors, starts the test services (dockerd and a
# registry, each its own, on a socket and a loopback port), runs every meson test, and stops the
# services again whatever happens. Arguments go to `meson test` (e.g. --suite unit).
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=build

scripts/configure-and-build.sh "$build_dir"

stop_services() { scripts/test-services.sh stop "$build_dir"; }
trap stop_services EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
service_variables=$(scripts/test-services.sh start "$build_dir")
eval "$service_variables"

status=0
meson test -C "$build_dir" --print-errorlogs "$@" || status=$?

# One closing line that any CI can read: "tests: N passed, N failed, N skipped".
python3 - "$build_dir/meson-logs/testlog.json" <<'SUMMARY'
import json, sys
counts = {"OK": 0, "FAIL": 0, "SKIP": 0}
with open(sys.argv[1]) as log:
    for line in log:
        result = json.loads(line)["result"]
        key = result if result in counts else "FAIL" if result != "EXPECTEDFAIL" else "OK"
        counts[key] += 1
print(f"tests: {counts['OK']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped")
SUMMARY
exit "$status"
