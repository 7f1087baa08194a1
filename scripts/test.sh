#!/usr/bin/env bash
# The whole test suite on a real Apptainer: set up (cached), then pytest.
#
#   scripts/test.sh                 everything
#   scripts/test.sh -m 'not integration'   only the fast unit tests (after one setup)
#   scripts/test.sh tests/test_model.py    any pytest arguments
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(bash "$REPO/scripts/setup.sh" | tail -n 1)"
export PATH="$BIN:$PATH"
cd "$REPO"
exec "$BIN/python" -m pytest -p no:cacheprovider "$@"
