#!/usr/bin/env bash
# README's main-job command: from a fresh Debian 12 machine to a container image booted as a
# micro-VM. Installs what is missing, builds, then runs the compactor command; its exit status
# is this script's.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/configure-and-build.sh build
# With no image named, `compactor run` boots the demo image that the build made from
# busybox-static, so this works where the only network is the Debian package registry.
exec build/examples/compactor run
