#!/bin/sh
# The official image's `healthcheck.sh --connect --innodb_initialized`: the server takes
# connections and InnoDB is up. Root connects through the socket (unix_socket login).
mariadb -uroot -N -e "SELECT ENGINE FROM information_schema.ENGINES
    WHERE ENGINE = 'InnoDB' AND SUPPORT IN ('YES', 'DEFAULT')" | grep -q InnoDB
