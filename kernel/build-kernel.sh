#!/bin/sh
# Builds the micro-VM guest kernel once and copies it into the build directory.
#
#   build-kernel.sh SOURCE_TARBALL CONFIG_FRAGMENT OUTPUT_DIR
#
# The result (vmlinux, bzImage, config) is cached under
#   ${COMPACTOR_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compactor/kernel}/<key>/
# where <key> names the source (its Debian package version, or the tarball's SHA-256 when no
# package owns it), a hash of the fragment and `recipe`, which changes whenever the steps below
# change what they produce. A cached kernel is reused by every build directory and clone on the
# machine; a missing one is built with COMPACTOR_KERNEL_JOBS jobs (default 2) under `nice`, which
# takes about 13 minutes of CPU time (14 to 21 minutes on two shared cores here).
set -eu

die() {
  echo "build-kernel.sh: $*" >&2
  exit 1
}

[ $# -eq 3 ] || die "usage: build-kernel.sh SOURCE_TARBALL CONFIG_FRAGMENT OUTPUT_DIR"
source_tarball=${COMPACTOR_KERNEL_SOURCE:-$1}
fragment=$2
output_dir=$3
recipe=1

[ -r "$fragment" ] || die "cannot read the config fragment $fragment"
fragment=$(realpath "$fragment")

source_id() {
  if [ "$source_tarball" = /usr/src/linux-source-6.1.tar.xz ] &&
     version=$(dpkg-query -W -f '${Version}' linux-source-6.1 2>/dev/null) &&
     [ -n "$version" ]; then
    echo "6.1-deb-$version"
  else
    echo "tar-$(sha256sum "$source_tarball" | cut -c1-16)"
  fi
}

cache_root=${COMPACTOR_KERNEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/compactor/kernel}
if [ -r "$source_tarball" ]; then
  key="$(source_id)-$( (cat "$fragment"; echo "recipe $recipe") | sha256sum | cut -c1-16)"
else
  die "the kernel source $source_tarball is missing: install the Debian package" \
      "linux-source-6.1 (or set COMPACTOR_KERNEL_SOURCE to a kernel source tarball)"
fi
cached=$cache_root/$key

copy_out() {
  mkdir -p "$output_dir"
  for file in vmlinux bzImage config; do
    cp "$cached/$file" "$output_dir/$file.tmp"
    mv "$output_dir/$file.tmp" "$output_dir/$file"
  done
}

if [ -f "$cached/complete" ]; then
  copy_out
  exit 0
fi

for tool in make gcc bc flex bison tar xz lz4 perl; do
  command -v "$tool" >/dev/null 2>&1 ||
    die "building the kernel needs '$tool' (Debian: build-essential bc flex bison xz-utils" \
        "lz4 perl libelf-dev libssl-dev)"
done

mkdir -p "$cache_root"
# One build per key on the machine at a time; a second caller waits and then copies.
exec 9>"$cache_root/$key.lock"
flock 9
if [ -f "$cached/complete" ]; then
  copy_out
  exit 0
fi

work=$cache_root/$key.work
rm -rf "$work"
mkdir -p "$work"
log=$work/build.log
echo "build-kernel.sh: building the guest kernel $key (log: $log); this takes minutes" >&2
started=$(date +%s)

tar -xJf "$source_tarball" -C "$work" --strip-components=1 ||
  die "cannot unpack $source_tarball"

jobs=${COMPACTOR_KERNEL_JOBS:-2}
kmake() {
  nice make -C "$work" ARCH=x86_64 -j"$jobs" "$@" >>"$log" 2>&1 ||
    die "'make $*' failed in $work; the end of $log:
$(tail -n 30 "$log")"
}

kmake tinyconfig
(cd "$work" && ARCH=x86_64 ./scripts/kconfig/merge_config.sh -m .config "$fragment") \
  >>"$log" 2>&1 || die "merge_config.sh failed; see $log"
kmake olddefconfig

# Kconfig drops options whose dependencies are unmet without an error: compare every line of
# the fragment with the final configuration.
missing=$(grep -E '^(CONFIG_|# CONFIG_)' "$fragment" | while IFS= read -r line; do
  case $line in
    "# CONFIG_"*)
      name=${line#\# }
      name=${name%% *}
      if grep -q "^$name=" "$work/.config"; then echo "$line (is set)"; fi
      ;;
    *)
      grep -qx "$line" "$work/.config" || echo "$line (got: $(grep "^${line%%=*}=" \
        "$work/.config" || echo unset))"
      ;;
  esac
done)
[ -z "$missing" ] || die "options of $fragment did not survive olddefconfig:
$missing"

kmake vmlinux bzImage

staging=$cache_root/$key.staging
rm -rf "$staging"
mkdir -p "$staging"
cp "$work/vmlinux" "$staging/vmlinux"
cp "$work/arch/x86/boot/bzImage" "$staging/bzImage"
cp "$work/.config" "$staging/config"
echo "built in $(( $(date +%s) - started )) s with -j$jobs" > "$staging/complete"
rm -rf "$cached"
mv "$staging" "$cached"
rm -rf "$work"
echo "build-kernel.sh: $(cat "$cached/complete"); cached in $cached" >&2
copy_out
