#!/usr/bin/env bash
# `make run`: Kafka, the local delivery receivers, the database, development users, then all
# services in one process on http://127.0.0.1:8000. Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
mkdir -p -m 700 var  # owner-only when made here: it holds the development secrets and tokens
mkdir -p var/inbox

started_kafka=0
inbox_pid=""
beacon_pid=""
cleanup() {
  trap - INT TERM EXIT
  [ -n "$beacon_pid" ] && kill -TERM "$beacon_pid" 2>/dev/null && wait "$beacon_pid" 2>/dev/null || true
  [ -n "$inbox_pid" ] && kill -TERM "$inbox_pid" 2>/dev/null && wait "$inbox_pid" 2>/dev/null || true
  if [ "$started_kafka" = 1 ]; then tools/kafka/kafka.sh stop || true; fi
  echo "beacon: stopped"
}
trap cleanup INT TERM EXIT

if ! tools/kafka/kafka.sh status >/dev/null 2>&1; then started_kafka=1; fi
tools/kafka/kafka.sh start

# The receivers are where the development defaults send (BEACON_DEMO_WEBHOOK_BASE,
# BEACON_SMS_GATEWAY_URL, BEACON_SMTP_PORT): with those changed, run tools/inbox.py yourself.
$bin/python tools/inbox.py --dir var/inbox --http-port 8025 --smtp-port 1025 &
inbox_pid=$!
sleep 1
if ! kill -0 "$inbox_pid" 2>/dev/null; then
  inbox_pid=""
  echo "beacon: the receivers did not start (is port 8025 or 1025 taken?); nothing would be delivered" >&2
  exit 1
fi

$bin/beacon db upgrade
echo "development users (tokens also in var/dev-tokens.json):"
$bin/beacon users dev

cat <<MSG

  Beacon is starting on http://127.0.0.1:${BEACON_HTTP_PORT:-8000}   (API docs: /docs there)
  Delivered webhooks and SMS: var/inbox/webhook.jsonl    e-mail: var/inbox/mail/*.eml
  Ctrl-C stops everything.

MSG
$bin/beacon run all &
beacon_pid=$!
wait "$beacon_pid"
