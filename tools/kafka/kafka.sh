#!/usr/bin/env bash
# Local single-node Apache Kafka without Docker: resolve the pinned jars (cached), format KRaft
# storage once, start kafka.Kafka on 127.0.0.1:$port, wait until it answers. `stop` ends it.
# Usage: tools/kafka/kafka.sh start|stop|status
# BEACON_KAFKA_PORT (default 9092) runs a second, separate broker for fault tests: its controller
# listens on the next port and its data lives in var/kafka-PORT.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
port="${BEACON_KAFKA_PORT:-9092}"
cport=$((port + 1))
if [ "$port" = 9092 ]; then var="$root/var/kafka"; else var="$root/var/kafka-$port"; fi
lib="$here/target/lib"
pidfile="$var/kafka.pid"
heap="${BEACON_KAFKA_HEAP:-384m}"

say() { echo "kafka: $*"; }

running_pid() {
  local pid=""
  [ -f "$pidfile" ] && pid="$(cat "$pidfile")"
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -q 'kafka\.Kafka' "/proc/$pid/cmdline" 2>/dev/null; then
    echo "$pid"; return 0
  fi
  # The pid file can be lost (var/ wiped by hand): find the broker by its config path instead.
  pid="$(pgrep -f "kafka\.Kafka $var/server.properties" | head -n 1)" || true
  [ -n "$pid" ] && echo "$pid"
}

answers() {  # true when a Kafka broker answers ApiVersions on 127.0.0.1:$port
  PORT="$port" python3 - <<'PY' 2>/dev/null
import os, socket, struct, sys
try:
    s = socket.create_connection(("127.0.0.1", int(os.environ["PORT"])), timeout=2)
    body = struct.pack(">hhih", 18, 0, 1, 6) + b"beacon"
    s.sendall(struct.pack(">i", len(body)) + body)
    n = struct.unpack(">i", s.recv(4))[0]
    data = b""
    while len(data) < n:
        chunk = s.recv(n - len(data))
        if not chunk: sys.exit(1)
        data += chunk
    sys.exit(0 if struct.unpack(">ih", data[:6]) == (1, 0) else 1)
except Exception:
    sys.exit(1)
PY
}

resolve() {
  if [ ! -f "$lib/.complete" ]; then
    say "resolving Apache Kafka jars from Maven Central (first time only)"
    (cd "$here" && mvn -q -B -Dstyle.color=never dependency:copy-dependencies -DoutputDirectory=target/lib -DincludeScope=runtime)
    touch "$lib/.complete"
  fi
}

start() {
  if pid="$(running_pid)"; then
    say "already running (pid $pid) on 127.0.0.1:$port"; return 0
  fi
  if answers; then
    say "a broker not started by this script already answers on 127.0.0.1:$port; using it"; return 0
  fi
  resolve
  mkdir -p -m 700 "$root/var"  # owner-only when made here, as Beacon makes it
  mkdir -p "$var/data" "$var/logs"
  sed -e "s|@DATA@|$var/data|" -e "s|@PORT@|$port|g" -e "s|@CPORT@|$cport|g" "$here/server.properties" > "$var/server.properties"
  if [ ! -f "$var/data/meta.properties" ]; then
    # Kafka's own rule for cluster ids: never one that starts with "-", which the storage tool
    # would read as an option (1 start in 64 failed on it).
    local cid; cid="$(python3 -c 'import base64,uuid
while (c := base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")).startswith("-"): pass
print(c)')"
    say "formatting KRaft storage (cluster $cid)"
    java -Xmx128m -cp "$lib/*" -Dlog4j2.configurationFile="$here/log4j2.properties" \
      kafka.tools.StorageTool format -t "$cid" -c "$var/server.properties" >"$var/logs/format.out" 2>&1 \
      || { cat "$var/logs/format.out"; exit 1; }
  fi
  say "starting (heap $heap)"
  nohup java -Xms"$heap" -Xmx"$heap" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$here/log4j2.properties" -Dkafka.logs.dir="$var/logs" \
    -cp "$lib/*" kafka.Kafka "$var/server.properties" >"$var/logs/server.out" 2>&1 &
  echo $! > "$pidfile"
  local waited=0
  until answers; do
    if ! running_pid >/dev/null; then
      say "broker exited during start; last lines of $var/logs/server.out:"; tail -n 20 "$var/logs/server.out"; exit 1
    fi
    if [ $waited -ge 120 ]; then say "no answer on 127.0.0.1:$port after 120 s"; stop; exit 1; fi
    sleep 0.5; waited=$((waited + 1))
  done
  say "ready on 127.0.0.1:$port (pid $(cat "$pidfile"))"
}

stop() {
  local pid
  if pid="$(running_pid)"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    if kill -0 "$pid" 2>/dev/null; then say "did not stop in 30 s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    say "stopped (pid $pid)"
  else
    say "not running"
  fi
  rm -f "$pidfile"
}

status() {  # exit 0 only for a broker this checkout started (the one `stop` would stop)
  if pid="$(running_pid)"; then say "running (pid $pid)"; return 0; fi
  if answers; then
    say "a broker answers on 127.0.0.1:$port, not started from this checkout ($var)"
  else
    say "not running"
  fi
  return 1
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
