#!/bin/sh
# The real redis image listens on all interfaces with protected mode off; do the same.
if [ "$1" = "redis-server" ]; then
  shift
  exec redis-server --bind '* -::*' --protected-mode no "$@"
fi
exec "$@"
