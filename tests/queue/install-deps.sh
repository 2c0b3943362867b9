#!/bin/sh
# What the queue tests need: Redis, and RabbitMQ for the amqp:// path. The tests start their own servers on
# loopback ports; the packages' own services are not needed.
exec sh "$(dirname "$0")/../apt-install.sh" redis-server rabbitmq-server
