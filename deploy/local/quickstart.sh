#!/usr/bin/env bash
# Runs pgsluice for real in front of a throwaway local PostgreSQL.
#   bash deploy/local/quickstart.sh
# Installs PostgreSQL with apt-get if it is missing, starts it on a free port in a temporary
# directory, builds pgsluice, and serves on 127.0.0.1:6432 until Ctrl-C, which stops both.
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT="${PGSLUICE_PORT:-6432}"
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "Installing PostgreSQL (apt-get)..."
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

WORK=$(mktemp -d /tmp/pgsluice-quickstart.XXXXXX)
[ "$(id -u)" = 0 ] && chown postgres: "$WORK"
PGPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')

cleanup() {
  [ -n "${SLUICE_PID:-}" ] && kill -INT "$SLUICE_PID" 2>/dev/null && wait "$SLUICE_PID" 2>/dev/null || true
  as_pg "$BIN/pg_ctl" -D "$WORK/data" -m fast stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "Starting PostgreSQL on 127.0.0.1:$PGPORT (data in $WORK)..."
as_pg "$BIN/initdb" -D "$WORK/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
printf 'local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n' >"$WORK/data/pg_hba.conf"
as_pg "$BIN/pg_ctl" -D "$WORK/data" -l "$WORK/postgres.log" -w \
  -o "-p $PGPORT -c listen_addresses=127.0.0.1 -c unix_socket_directories=$WORK" start >/dev/null
as_pg "$BIN/psql" -X -q -h 127.0.0.1 -p "$PGPORT" -U postgres -c "CREATE ROLE demo LOGIN PASSWORD 'demo'" -c "CREATE DATABASE demo OWNER demo"

cat >"$WORK/userlist.txt" <<USERS
"demo" "demo"
USERS
cat >"$WORK/pgbouncer.ini" <<INI
[databases]
demo = host=127.0.0.1 port=$PGPORT dbname=demo

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = 20
admin_users = demo
INI

echo "Building pgsluice (release)..."
cargo build --release --quiet
./target/release/pgsluice "$WORK/pgbouncer.ini" &
SLUICE_PID=$!
sleep 1
cat <<HELLO

pgsluice is listening on 127.0.0.1:$PORT in transaction mode, in front of PostgreSQL on port $PGPORT.
Connect with:
    psql "postgresql://demo:demo@127.0.0.1:$PORT/demo"
    pgbench -i -h 127.0.0.1 -p $PORT -U demo demo    # password: demo
The admin console (PgBouncer's SHOW, PAUSE, RESUME, RELOAD, ...):
    psql "postgresql://demo:demo@127.0.0.1:$PORT/pgbouncer" -c 'SHOW POOLS'
Config: $WORK/pgbouncer.ini    Press Ctrl-C to stop both.
HELLO
wait "$SLUICE_PID"
