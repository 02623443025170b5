#!/bin/sh
# The official image's Redis is built with protected mode off, so that other containers
# may connect without a password; Debian's is not, so say it on the command line.
set -eu
if [ "$1" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
