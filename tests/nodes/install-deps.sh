#!/bin/sh
# Install what tests/nodes needs on a Debian bookworm machine (run as root). Idempotent.
#   systemd-container : systemd-nspawn
#   debootstrap       : builds the cached node rootfs (once, into /var/cache/piml-testnodes)
#   openssh-client    : ssh, ssh-keygen, ssh-keyscan
#   iproute2          : ip netns / veth / bridge
#   util-linux, mount : nsenter, mount (overlayfs); kmod : modprobe overlay if needed
#   procps            : sysctl (disable IPv6 on the test bridge)
set -eu
if [ "$(id -u)" != 0 ]; then echo "run as root" >&2; exit 1; fi
pkgs="systemd-container debootstrap openssh-client iproute2 util-linux mount kmod procps"
missing=""
for p in $pkgs; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends $missing
fi
echo "tests/nodes dependencies installed:$missing (others already present)"
