#!/usr/bin/env bash
# Set up everything (venv, pinned dependencies) and run the simulated LATISS
# daily calibration end to end on an embedded (SQLite) repository.
# Usage: scripts/run_daily.sh [REPO] [extra `cpcombined run` options]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
REPO="${1:-$ROOT/daily_repo}"
shift || true
exec cpcombined run "$ROOT/config/examples/latiss_daily.yaml" --repo "$REPO" \
    --summary-json "$REPO/summary.json" --report "$REPO/report.html" "$@"
