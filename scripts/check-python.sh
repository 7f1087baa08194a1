#!/usr/bin/env bash
# The Python gates: ruff (pyflakes, pycodestyle, isort, bugbear, async, and pydocstyle's
# missing-docstring rules on the public API) and `ruff format --check` over the whole tree, and mypy on the pure and
# host layers (kernel_provider/model, kernel_provider/host). Configuration: pyproject.toml.
# Runs both and exits non-zero when either finds something.
#
# Environment: PYTHON, the interpreter whose ruff and mypy to use (default: python3).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"
failed=()
"$PYTHON" -m ruff check --output-format concise . || failed+=(ruff)
"$PYTHON" -m ruff format --check . || failed+=("ruff format")
"$PYTHON" -m mypy || failed+=(mypy)
if (( ${#failed[@]} )); then
    printf '[check-python] failed: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '[check-python] all checks passed\n' >&2
