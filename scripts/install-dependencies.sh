#!/usr/bin/env bash
# Installs, as root with apt-get, every Debian 12 package that the build, the tests and the
# benchmarks need, and unpacks (without installing) Debian's cloud kernel into the build tree
# for the nested test harness. Safe to run again: it installs only what is missing.
#
# Usage: scripts/install-dependencies.sh [BUILD_DIR]   (default: build)
set -euo pipefail

build_dir=${1:-build}

packages=(
  # Build
  build-essential g++ meson ninja-build pkg-config cmake
  libboost-dev libfmt-dev libarchive-dev libcurl4-openssl-dev libssl-dev
  nlohmann-json3-dev libcli11-dev catch2 libseccomp-dev
  clang lld libclang-rt-14-dev
  # Test services and reference tools
  docker.io docker-registry skopeo umoci qemu-system-x86 busybox-static
  iproute2 iputils-ping zstd lz4 xz-utils gzip cpio libarchive-tools ca-certificates curl
  apache2-utils openssl e2fsprogs procps psmisc time hyperfine
  # Kernel build
  linux-source-6.1 bc bison flex libelf-dev libssl-dev dwarves kmod python3
)

say() { printf 'install-dependencies: %s\n' "$*"; }

if [[ $(id -u) -ne 0 ]]; then
  say "must run as root (it installs Debian packages with apt-get)" >&2
  exit 1
fi

missing=()
for package in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

export DEBIAN_FRONTEND=noninteractive
if ((${#missing[@]})); then
  say "installing ${missing[*]}"
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  say "all ${#packages[@]} packages are installed"
fi

# The nested harness boots Debian's cloud kernel as an L1 guest under QEMU and loads its kvm
# modules there. The package is only unpacked into the build tree, never installed.
nested_dir="$build_dir/nested"
cloud_meta=linux-image-cloud-amd64
cloud_package=$(apt-cache depends "$cloud_meta" 2>/dev/null |
  awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [[ -z $cloud_package ]]; then
  apt-get update -q
  cloud_package=$(apt-cache depends "$cloud_meta" | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
fi
if [[ -z $cloud_package ]]; then
  say "cannot resolve $cloud_meta to a kernel package" >&2
  exit 1
fi

stamp="$nested_dir/cloud-kernel/.package"
if [[ -f $stamp && $(cat "$stamp") == "$cloud_package" ]]; then
  say "$cloud_package is unpacked in $nested_dir/cloud-kernel"
else
  say "unpacking $cloud_package into $nested_dir/cloud-kernel"
  download_dir=$(mktemp -d)
  chmod 755 "$download_dir" # apt downloads as the _apt user
  trap 'rm -rf "$download_dir"' EXIT
  (cd "$download_dir" && apt-get download -q "$cloud_package" >/dev/null)
  rm -rf "$nested_dir/cloud-kernel"
  mkdir -p "$nested_dir/cloud-kernel"
  dpkg-deb -x "$download_dir"/*.deb "$nested_dir/cloud-kernel"
  echo "$cloud_package" >"$stamp"
fi
