#!/usr/bin/env bash
# A throwaway PostgreSQL server for the model-selection tests and the cluster check: its own cluster in a folder,
# listening on 127.0.0.1 only, trust authentication for local connections, one database "dbp".
#   build/postgres.sh start DIR [PORT]   creates and starts it; prints the storage string postgresql://postgres@127.0.0.1:PORT/dbp
#   build/postgres.sh stop DIR           stops it and deletes DIR
# Needs Debian's postgresql package (PostgreSQL 15); run as root it runs the server as the postgres user.
set -euo pipefail
command=${1:?start or stop}
dir=${2:?a folder for the cluster}
port=${3:-55432}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
if [ -z "$bin" ]; then
  echo "PostgreSQL is not installed (apt-get install postgresql)" >&2
  exit 1
fi
as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}
case "$command" in
  start)
    mkdir -p "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown postgres "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; exit 1; }
    # Loopback only; the socket in the cluster folder, not /var/run.
    as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c max_connections=200" start >/dev/null || { cat "$dir/server.log" >&2; exit 1; }
    as_owner "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres dbp
    echo "postgresql://postgres@127.0.0.1:$port/dbp"
    ;;
  stop)
    if [ -d "$dir/data" ]; then as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || true; fi
    rm -rf "$dir"
    ;;
  *)
    echo "usage: $0 start|stop DIR [PORT]" >&2
    exit 2
    ;;
esac
