#!/bin/sh
# The official image's start: arguments starting with "-" go to mariadbd; a new data
# directory gets MARIADB_DATABASE, MARIADB_USER with MARIADB_PASSWORD and root's password,
# through a server on a socket of its own, so the healthcheck never sees it.
set -eu
if [ "${1#-}" != "$1" ]; then
    set -- mariadbd "$@"
fi
if [ "$1" != mariadbd ]; then
    exec "$@"
fi
shift
if [ ! -d /var/lib/mysql/mysql ]; then
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db >/dev/null
    mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
    pid=$!
    until mariadb --socket=/run/mysqld/init.sock -e 'SELECT 1' >/dev/null 2>&1; do
        sleep 1
    done
    mariadb --socket=/run/mysqld/init.sock <<SQL
CREATE DATABASE IF NOT EXISTS \`$MARIADB_DATABASE\`;
CREATE USER '$MARIADB_USER'@'%' IDENTIFIED BY '$MARIADB_PASSWORD';
GRANT ALL ON \`$MARIADB_DATABASE\`.* TO '$MARIADB_USER'@'%';
ALTER USER root@localhost IDENTIFIED VIA unix_socket
    OR mysql_native_password USING PASSWORD('$MARIADB_ROOT_PASSWORD');
SQL
    kill "$pid"
    wait "$pid" || true
fi
exec mariadbd --user=mysql "$@"
