#!/bin/sh
# What tests/nodes needs on a Debian bookworm machine (run as root):
#   systemd-container : systemd-nspawn
#   debootstrap       : builds the cached node rootfs (once, into /var/cache/piml-testnodes)
#   openssh-client    : ssh, ssh-keygen, ssh-keyscan
#   iproute2          : ip netns / veth / bridge
#   util-linux, mount : nsenter, mount (overlayfs); kmod : modprobe overlay if needed
#   procps            : sysctl (disable IPv6 on the test bridge)
exec sh "$(dirname "$0")/../apt-install.sh" systemd-container debootstrap openssh-client iproute2 util-linux mount kmod procps
