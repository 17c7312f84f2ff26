#!/usr/bin/env bash
# Starts a streaming replica of a local PostgreSQL (15 or later) for the
# tests (README: Running several instances), or stops one.
#
#   bash scripts/replica.sh REPLICA_PORT PRIMARY_PORT USER DATABASE
#   bash scripts/replica.sh stop DIR
#
# Takes a base backup of the primary (`pg_basebackup -R`, through a physical
# replication slot named tally_replica_REPLICA_PORT so that the primary keeps
# the WAL the replica has not received yet) into a new temporary directory,
# starts it as a hot standby on 127.0.0.1:REPLICA_PORT and prints the
# directory once the replica accepts connections. The backup and the
# replica run as the postgres OS user (as root it switches to it), who
# reaches the primary over its Unix socket with peer authentication; the
# primary gets a `local replication postgres peer` line in pg_hba.conf if no
# rule lets that through (then a reload), and needs `wal_level` replica or
# logical (the default; changing it needs a restart, which this script does
# not do). USER may then log in to the replica with its password, as on the
# primary, and may pause and resume its replay (`pg_wal_replay_pause()`,
# granted in DATABASE): tests only.
#
# `stop DIR` stops that replica, drops its slot on the primary and removes
# DIR.
set -euo pipefail

bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -n "$bin" ] || { echo "no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }

as_postgres() {
  if [ "$(id -u)" = 0 ]; then su postgres -s /bin/sh -c "$1"; else sh -c "$1"; fi
}

if [ "${1:-}" = stop ]; then
  dir=$2
  [ -f "$dir/replica.env" ] || { echo "$dir is not a replica started by this script" >&2; exit 1; }
  # shellcheck disable=SC1091
  . "$dir/replica.env"
  as_postgres "'$bin/pg_ctl' -D '$dir/data' -m fast -w stop" >/dev/null 2>&1 || true
  as_postgres "psql -p $PRIMARY_PORT -d postgres -v ON_ERROR_STOP=1 -qtAc \
    \"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '$SLOT'\"" \
    >/dev/null || true
  rm -rf "$dir"
  exit 0
fi

replica_port=$1
primary_port=$2
user=$3
database=$4
slot="tally_replica_$replica_port"

primary() { as_postgres "psql -p $primary_port -d ${2:-postgres} -v ON_ERROR_STOP=1 -qtAc \"$1\""; }

case "$(primary "SHOW wal_level")" in
  replica | logical) ;;
  *) echo "the primary's wal_level is $(primary "SHOW wal_level"): set it to replica and restart it" >&2; exit 1 ;;
esac
# A local replication connection for the postgres user, if no rule allows one.
if [ "$(primary "SELECT count(*) FROM pg_hba_file_rules WHERE type = 'local' AND 'replication' = ANY(database)
                 AND ('all' = ANY(user_name) OR 'postgres' = ANY(user_name)) AND error IS NULL")" = 0 ]; then
  hba=$(primary "SHOW hba_file")
  as_postgres "printf '%s\n' 'local replication postgres peer' >> '$hba'"
  primary "SELECT pg_reload_conf()" >/dev/null
fi
# A slot left by an earlier run that was not stopped would hold WAL forever.
primary "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
         WHERE slot_name = '$slot' AND NOT active" >/dev/null
primary "GRANT EXECUTE ON FUNCTION pg_wal_replay_pause(), pg_wal_replay_resume() TO $user" "$database"

dir=$(mktemp -d -t tally-replica.XXXXXX)
chmod 755 "$dir"
[ "$(id -u)" = 0 ] && chown postgres "$dir"
printf 'PRIMARY_PORT=%s\nSLOT=%s\n' "$primary_port" "$slot" >"$dir/replica.env"
as_postgres "'$bin/pg_basebackup' -p $primary_port -D '$dir/data' -R -C -S $slot -X stream -c fast"
# Debian keeps postgresql.conf and pg_hba.conf outside the data directory:
# the replica gets its own (postgresql.auto.conf, copied from the primary,
# holds whatever ALTER SYSTEM set there).
as_postgres "cat > '$dir/data/postgresql.conf' <<EOF
port = $replica_port
listen_addresses = '127.0.0.1'
unix_socket_directories = '$dir'
hot_standby = on
hot_standby_feedback = on
max_connections = 200
logging_collector = off
EOF
cat > '$dir/data/pg_hba.conf' <<EOF
local all all peer
host all all 127.0.0.1/32 scram-sha-256
EOF"
as_postgres "'$bin/pg_ctl' -D '$dir/data' -l '$dir/replica.log' -w -t 60 start" >/dev/null || {
  echo "the replica did not start; its log:" >&2
  cat "$dir/replica.log" >&2 || true
  exit 1
}
for _ in $(seq 1 100); do
  if [ "$(as_postgres "psql -h '$dir' -p $replica_port -d postgres -qtAc 'SELECT pg_is_in_recovery()'" 2>/dev/null)" = t ]; then
    echo "$dir"
    exit 0
  fi
  sleep 0.1
done
echo "the replica does not answer as a standby; its log:" >&2
cat "$dir/replica.log" >&2 || true
exit 1
