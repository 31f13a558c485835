#!/usr/bin/env bash
# Dependency audit of the project's installed environment (issue 7).
#
#   bash bench/audit.sh                 # uses .venv; writes bench/out/audit.txt
#   VENV=/path/to/venv bash bench/audit.sh
#
# pip-audit asks PyPI's JSON API (default) or OSV (-s osv) about every installed
# distribution, so it needs network access to pypi.org or api.osv.dev. A package it
# cannot look up is listed as "not found on PyPI and could not be audited": that is
# NOT a clean result. See docs/reliability.md for the last recorded run.
set -euo pipefail
VENV=${VENV:-.venv}
OUT=${OUT:-bench/out/audit.txt}
mkdir -p "$(dirname "$OUT")"
"$VENV/bin/python" -m pip_audit --version >/dev/null 2>&1 || "$VENV/bin/pip" install -q pip-audit
status=0
"$VENV/bin/python" -m pip_audit --local --progress-spinner off "$@" >"$OUT" 2>&1 || status=$?
skipped=$(grep -c "could not be audited" "$OUT" || true)
echo "pip-audit exit $status; $skipped package(s) could not be audited; full output in $OUT"
head -n 1 "$OUT"
exit $status
