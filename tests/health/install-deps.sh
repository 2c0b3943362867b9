#!/bin/sh
# What the health tests need from Debian: Redis and RabbitMQ (the queue probes). Ray, Dask and MLflow come
# from the test extras in pyproject.toml; the tests start every server themselves on loopback ports.
exec sh "$(dirname "$0")/../apt-install.sh" redis-server rabbitmq-server
