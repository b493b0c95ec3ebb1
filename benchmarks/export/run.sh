#!/bin/sh
# Export benchmark: an OCI image made of this machine's /usr (about 200 MB, three gzip layers)
# flattened to a zstd cpio by flatten_oci, side by side with umoci unpack + find | cpio + zstd,
# and with the floor: the same layers through gzip -dc | zstd -3. Then the same three on a
# busybox-sized image (the build's demo image), where start-up costs dominate, with hyperfine.
#
#   benchmarks/export/run.sh BUILD_DIR [WORK_DIR]
set -eu
build=$(realpath "$1")
work=${2:-$(mktemp -d /var/tmp/compactor-export-XXXXXX)}
mkdir -p "$work"
layout=$work/image
timing() { /usr/bin/time -f "%e s, peak RSS %M KiB" "$@"; }

if [ ! -f "$layout/index.json" ]; then
  mkdir -p "$layout/blobs/sha256"
  echo '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
  # Three layers (about 230 MB of files) from directories of /usr.
  set -- "usr/share/doc" "usr/lib/python3.11 usr/share/perl" "usr/share/i18n usr/share/zoneinfo"
  layers=""; diffs=""
  for part in "$@"; do
    tar -C / --sort=name -cf "$work/layer.tar" $part 2>/dev/null || true
    diff=$(sha256sum < "$work/layer.tar" | cut -d' ' -f1)
    gzip -6 -n < "$work/layer.tar" > "$work/layer.tar.gz"
    digest=$(sha256sum < "$work/layer.tar.gz" | cut -d' ' -f1)
    size=$(stat -c %s "$work/layer.tar.gz")
    mv "$work/layer.tar.gz" "$layout/blobs/sha256/$digest"
    layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$digest\",\"size\":$size}"
    diffs="$diffs${diffs:+,}\"sha256:$diff\""
  done
  rm -f "$work/layer.tar"
  printf '{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[%s]}}' "$diffs" > "$work/config"
  cdigest=$(sha256sum < "$work/config" | cut -d' ' -f1); csize=$(stat -c %s "$work/config")
  mv "$work/config" "$layout/blobs/sha256/$cdigest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s]}' "$cdigest" "$csize" "$layers" > "$work/manifest"
  mdigest=$(sha256sum < "$work/manifest" | cut -d' ' -f1); msize=$(stat -c %s "$work/manifest")
  mv "$work/manifest" "$layout/blobs/sha256/$mdigest"
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"bench"}}]}' "$mdigest" "$msize" > "$layout/index.json"
fi
echo "image: $(du -sh "$layout/blobs" | cut -f1) of gzip layers in $layout"
layer_bytes=$(for blob in "$layout"/blobs/sha256/*; do gzip -dc "$blob" 2>/dev/null || true; done | wc -c)
echo "layer tar streams: $((layer_bytes / 1000000)) MB uncompressed (for MB/s: divide by the times)"

echo "--- floor: gzip -dc layers | zstd -3"
cat > "$work/floor.sh" <<FLOOR
for blob in $layout/blobs/sha256/*; do gzip -dc "\$blob" 2>/dev/null; done | zstd -3 -q -c > $work/floor.zst
FLOOR
timing sh "$work/floor.sh"

echo "--- compactor: flatten_oci (zstd -3)"
timing "$build/benchmarks/export/flatten_oci" "$layout" "$work/ours.cpio.zst" zstd

echo "--- reference: umoci unpack + find | cpio -o -H newc + zstd -3"
rm -rf "$work/bundle"
cat > "$work/reference.sh" <<REF
umoci unpack --rootless --image $layout:bench $work/bundle >/dev/null
cd $work/bundle/rootfs && find . | cpio -o -H newc --quiet | zstd -3 -q -c > $work/reference.cpio.zst
REF
timing sh "$work/reference.sh"
rm -rf "$work/bundle"

ls -l "$work"/*.zst

small=$build/examples/demo-image
if [ -f "$small/index.json" ] && command -v hyperfine >/dev/null; then
  echo "--- a busybox-sized image ($(du -sh "$small/blobs" | cut -f1)): $small"
  cat > "$work/small-floor.sh" <<FLOOR
for blob in $small/blobs/sha256/*; do gzip -dc "\$blob" 2>/dev/null; done | zstd -3 -q -c > $work/small-floor.zst
FLOOR
  cat > "$work/small-reference.sh" <<REF
rm -rf $work/small-bundle
umoci unpack --rootless --image $small:demo $work/small-bundle >/dev/null
cd $work/small-bundle/rootfs && find . | cpio -o -H newc --quiet | zstd -3 -q -c > $work/small-reference.cpio.zst
REF
  hyperfine -N --warmup 2 --runs 20 \
    -n floor "sh $work/small-floor.sh" \
    -n compactor "$build/benchmarks/export/flatten_oci $small $work/small-ours.cpio.zst zstd" \
    -n umoci-cpio-zstd "sh $work/small-reference.sh"
  rm -rf "$work/small-bundle"
fi
echo "work directory: $work (remove it when done)"
