#!/usr/bin/env bash
# A throwaway PostgreSQL for the tests, from Debian's packages, on 127.0.0.1:${BEACON_PG_PORT:-54329}
# with data under var/pg. Usage: tools/postgres.sh start|stop|url
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/var/pg"
port="${BEACON_PG_PORT:-54329}"
url="postgresql+asyncpg://beacon@127.0.0.1:$port/beacon"

bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  if [ -z "$d" ]; then
    echo "postgres: installing Debian's postgresql package" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
    d="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
  fi
  echo "$d"
}

# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start() {
  local bin; bin="$(bindir)"
  mkdir -p -m 700 "$root/var"  # owner-only when made here, as Beacon makes it
  mkdir -p "$dir"
  if [ "$(id -u)" = 0 ]; then
    chown postgres "$dir"
    # The server runs as postgres and must pass through var/ to its data: passage for its
    # group only (0710, nothing listed), and only when it has none.
    if ! runuser -u postgres -- test -x "$root/var"; then
      chgrp postgres "$root/var" && chmod g+x "$root/var"
    fi
  fi
  if [ ! -f "$dir/data/PG_VERSION" ]; then
    # fsync off below: this server holds test data only.
    as_pg "$bin/initdb" -D "$dir/data" -U beacon --auth=trust -E UTF8 >/dev/null
  fi
  if "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    echo "postgres: a server already answers on 127.0.0.1:$port; using it"
  else
    as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
      -o "-h 127.0.0.1 -p $port -k $dir -c fsync=off -c full_page_writes=off" start >/dev/null
  fi
  as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U beacon -d postgres -tAc \
    "SELECT 1 FROM pg_database WHERE datname='beacon'" | grep -q 1 \
    || as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U beacon beacon
  echo "postgres: ready"; echo "$url"
}

stop() {
  local bin; bin="$(bindir)"
  [ -f "$dir/data/PG_VERSION" ] && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
  echo "postgres: stopped"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  url) echo "$url" ;;
  *) echo "usage: $0 start|stop|url" >&2; exit 2 ;;
esac
