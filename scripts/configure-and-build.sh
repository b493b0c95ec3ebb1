#!/usr/bin/env bash
# Installs what is missing, configures BUILD_DIR (default: build) once with warnings as errors,
# and builds everything. Idempotent; extra arguments go to `meson setup`.
set -euo pipefail
cd "$(dirname "$0")/.."
build_dir=${1:-build}
shift || true

scripts/install-dependencies.sh "$build_dir"
if [[ ! -f $build_dir/build.ninja ]]; then
  meson setup "$build_dir" --werror "$@"
fi
ninja -C "$build_dir"
