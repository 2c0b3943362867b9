#!/bin/sh
# What the contract tests need from Debian: namespaces (iproute2, util-linux), the programs that stand in for
# the redis, rabbitmq and postgres images, and Go (KubeRay's pod builders are built from its Go module; the
# machines' own Go is used when there is one: Debian's may be too old for the module). The Python of each
# image comes from pyenv on these machines (tests/contract/images.py says which and how).
sh "$(dirname "$0")/../apt-install.sh" iproute2 util-linux redis-server rabbitmq-server postgresql
if ! command -v go >/dev/null 2>&1 && [ ! -x /usr/local/go/bin/go ]; then
    echo "install-deps: no Go on this machine; KubeRay's pod builders need Go >= 1.26" >&2
fi
