#!/bin/sh
# What the control-plane tests need from Debian: a C compiler and libc headers (kine links SQLite through cgo).
# Go itself (>= 1.26.5) is not Debian's (too old); the machine's /usr/local/go is used. Building the binaries
# takes ~6 min once (see README.md); `scripts/control-plane build` does it ahead of the tests.
sh "$(dirname "$0")/../apt-install.sh" gcc libc6-dev
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
    echo "install-deps: no Go on this machine; the control-plane tests are skipped (they need Go >= 1.26.5)" >&2
fi
