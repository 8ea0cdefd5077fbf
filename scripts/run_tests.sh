#!/usr/bin/env bash
# Set up everything (venv, pinned dependencies) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/run_tests.sh -k ptc --run-fullsize
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
exec python -m pytest -n "${CPCOMBINED_TEST_WORKERS:-2}" "$@"
