#!/bin/sh
# Debian packages the `piml flash` tests and benchmark need. Idempotent; run as root (CI: fresh Debian bookworm).
set -eu
PACKAGES="util-linux fdisk dosfstools mtools e2fsprogs xz-utils zstd gzip pigz bmap-tools"
missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends $missing
fi
