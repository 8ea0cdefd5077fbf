#!/usr/bin/env bash
# Set up everything (venv, pinned dependencies) and run the test suite.
# Extra arguments go to pytest, e.g. scripts/run_tests.sh -k ptc --run-fullsize
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
# The tests marked `postgres` start a throwaway PostgreSQL 15 server
# (tests/conftest.py: postgres_url) from Debian's postgresql-15 package;
# install it when it is missing.  Never fails the run: without the server
# those tests are skipped with the reason.
if [ ! -x /usr/lib/postgresql/15/bin/initdb ] && command -v apt-get >/dev/null 2>&1; then
    echo "run_tests: installing postgresql-15 (for the PostgreSQL registry tests)" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                postgresql-15; } >/dev/null 2>&1; then
        echo "run_tests: could not install postgresql-15; the PostgreSQL tests will be skipped" >&2
    fi
fi
# The report tests (tests/test_report.py) take screenshots of the HTML report
# with headless Chromium from Debian's chromium package; install it when it
# is missing.  Never fails the run: without it those tests are skipped with
# the reason.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    echo "run_tests: installing chromium (for the report screenshot tests)" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo -n"; fi
    if ! { $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
            && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                chromium fonts-dejavu-core; } >/dev/null 2>&1; then
        echo "run_tests: could not install chromium; the report screenshot tests will be skipped" >&2
    fi
fi
exec python -m pytest -n "${CPCOMBINED_TEST_WORKERS:-2}" "$@"
