#!/usr/bin/env bash
# Debian packages the queue tests need: Redis (and RabbitMQ for the amqp:// path). Idempotent; run as root.
set -euo pipefail
missing=()
for pkg in redis-server rabbitmq-server; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null
  # The tests start their own servers on loopback ports; the packages' own services are not needed.
  apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi
