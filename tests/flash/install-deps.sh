#!/bin/sh
# What the `piml flash` tests and benchmark need: partitioning, FAT and ext4 tools to build images,
# mtools to check FAT contents independently, the decompressors, and bmaptool for the benchmark.
exec sh "$(dirname "$0")/../apt-install.sh" util-linux fdisk dosfstools mtools e2fsprogs xz-utils zstd gzip pigz bmap-tools
