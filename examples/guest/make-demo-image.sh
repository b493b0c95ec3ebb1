#!/bin/sh
# Builds the demo image that `compactor run` boots when no image is named: an OCI image layout
# with one layer made from Debian's busybox-static, so that a fresh machine needs no registry.
# Usage: make-demo-image.sh BUSYBOX OUTPUT_DIR
set -eu
busybox=$1
out=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mkdir -p "$work/root/bin" "$work/root/etc" "$work/root/tmp"
cp "$busybox" "$work/root/bin/busybox"
for applet in sh echo cat ls uname id env sleep true false ps mount hostname; do
  ln -s busybox "$work/root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$work/root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' >"$work/root/etc/group"
chmod 1777 "$work/root/tmp"

# Fixed owner and times: the same busybox gives the same image.
tar -C "$work/root" --sort=name --owner=0 --group=0 --numeric-owner --mtime=@0 \
  -cf "$work/layer.tar" .
diff_id=$(sha256sum <"$work/layer.tar" | cut -d' ' -f1)
gzip -9 -n <"$work/layer.tar" >"$work/layer.tar.gz"

rm -rf "$out"
mkdir -p "$out/blobs/sha256"
store() { # FILE -> prints "DIGEST SIZE" after moving FILE into the blob store
  digest=$(sha256sum <"$1" | cut -d' ' -f1)
  size=$(stat -c %s "$1")
  mv "$1" "$out/blobs/sha256/$digest"
  echo "$digest $size"
}
set -- $(store "$work/layer.tar.gz")
layer_digest=$1 layer_size=$2

cat >"$work/config" <<CONFIG
{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/bin"],"Cmd":["sh","-c","echo Hello from a Compactor micro-VM; uname -sr"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:$diff_id"]}}
CONFIG
set -- $(store "$work/config")
config_digest=$1 config_size=$2

cat >"$work/manifest" <<MANIFEST
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:$config_digest","size":$config_size},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:$layer_digest","size":$layer_size}]}
MANIFEST
set -- $(store "$work/manifest")
manifest_digest=$1 manifest_size=$2

echo '{"imageLayoutVersion":"1.0.0"}' >"$out/oci-layout"
cat >"$out/index.json" <<INDEX
{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:$manifest_digest","size":$manifest_size,"annotations":{"org.opencontainers.image.ref.name":"demo"}}]}
INDEX
