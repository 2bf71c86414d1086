#!/usr/bin/env bash
# `make test`: the whole suite. The fixtures start what the tests need (the local Kafka broker,
# PostgreSQL, loopback delivery receivers) and stop what they started.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
set +e
.venv/bin/pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
echo "test suite took $(( $(date +%s) - start )) s"
exit $rc
