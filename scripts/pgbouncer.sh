#!/usr/bin/env bash
# Starts a PgBouncer in transaction pooling in front of a local PostgreSQL,
# for the tests (README: Running several instances).
#
#   bash scripts/pgbouncer.sh LISTEN_PORT POSTGRES_PORT USER PASSWORD
#
# Writes its config, auth file, log and pid file into a new temporary
# directory, which it prints (stop it with `kill $(cat DIR/pgbouncer.pid)`).
# Every database name is forwarded (`* =`), so per-test databases need no
# entry; clients are trusted (it listens on 127.0.0.1 only) and PgBouncer logs
# in to PostgreSQL with USER and PASSWORD. PgBouncer refuses to run as root:
# as root it runs as the postgres user.
set -euo pipefail
listen_port=$1
pg_port=$2
user=$3
password=$4

dir=$(mktemp -d -t tally-pgbouncer.XXXXXX)
chmod 755 "$dir"
cat >"$dir/pgbouncer.ini" <<EOF
[databases]
* = host=127.0.0.1 port=$pg_port

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $listen_port
unix_socket_dir =
auth_type = trust
auth_file = $dir/userlist.txt
pool_mode = transaction
max_client_conn = 2000
default_pool_size = 8
max_db_connections = 12
server_idle_timeout = 10
logfile = $dir/pgbouncer.log
pidfile = $dir/pgbouncer.pid
EOF
printf '"%s" "%s"\n' "$user" "$password" >"$dir/userlist.txt"
chmod 644 "$dir/pgbouncer.ini" "$dir/userlist.txt"

if [ "$(id -u)" = 0 ]; then
  chown -R postgres "$dir"
  su postgres -s /bin/sh -c "pgbouncer -d '$dir/pgbouncer.ini'"
else
  pgbouncer -d "$dir/pgbouncer.ini"
fi
for _ in $(seq 1 50); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$listen_port") 2>/dev/null; then
    echo "$dir"
    exit 0
  fi
  sleep 0.1
done
echo "pgbouncer did not start; its log:" >&2
cat "$dir/pgbouncer.log" >&2 || true
exit 1
