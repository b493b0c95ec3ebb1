#!/usr/bin/env bash
# Installs the library into a staging directory and builds a program against it, once with
# pkg-config directly and once from a CMake project; both programs must run.
# Usage: install_and_consume_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build_dir=$1
source_dir=$2
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT

meson install -C "$build_dir" --no-rebuild --quiet --destdir "$stage"
pc_file=$(find "$stage" -name compactor.pc | head -n1)
[[ -n $pc_file ]] || { echo "install put no compactor.pc under $stage"; exit 1; }
[[ -f $(find "$stage" -path '*include/compactor/net/http_client.hpp' | head -n1) ]] ||
  { echo "install put no headers under $stage"; exit 1; }

# The staged file still names the configured prefix; point it at the staging directory.
sed -i "s|^prefix=|prefix=$stage|" "$pc_file"
export PKG_CONFIG_PATH=$(dirname "$pc_file")

# shellcheck disable=SC2046 # pkg-config prints several flags on purpose
c++ -std=c++20 -o "$stage/consumer-pkgconfig" "$source_dir/consumer.cpp" \
  $(pkg-config --cflags --libs compactor)
"$stage/consumer-pkgconfig"

cmake -S "$source_dir" -B "$stage/cmake-build" -G Ninja >/dev/null
cmake --build "$stage/cmake-build" >/dev/null
"$stage/cmake-build/consumer"
echo "pkg-config and CMake consumers built and ran"
