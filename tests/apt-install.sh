#!/bin/sh
# Install the Debian packages named as arguments that are not installed yet. Idempotent; run as root.
# Each tests/*/install-deps.sh calls this with what its tests need (scripts/test runs them all).
set -eu
if [ "$(id -u)" != 0 ]; then echo "$0: run as root" >&2; exit 1; fi
missing=""
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    # shellcheck disable=SC2086 # word splitting of the package list is intended
    apt-get install -y -q --no-install-recommends $missing >/dev/null
fi
echo "apt-install: installed:${missing:- nothing, all present} (asked for: $*)"
