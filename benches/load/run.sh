#!/usr/bin/env bash
# Load benchmark: pgbench through pgsluice, through PgBouncer and straight at PostgreSQL, in one run.
#   bash benches/load/run.sh [--duration SECONDS] [--scenarios S1,S2,...]
# Installs PostgreSQL and PgBouncer with apt-get when missing, builds pgsluice in release mode, then
# runs benches/load/run.py, which writes a markdown table and a JSON file under target/load/.
set -euo pipefail
cd "$(dirname "$0")/../.."
need=()
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
command -v pgbench >/dev/null 2>&1 || need+=(postgresql-contrib)
[ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null 2>&1 || need+=(pgbouncer)
command -v valgrind >/dev/null 2>&1 || need+=(valgrind)  # S1C: instructions per transaction
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --quiet
exec python3 benches/load/run.py "$@"
