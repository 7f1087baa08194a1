#!/usr/bin/env bash
# The gates of labextension/: ESLint (TypeScript rules, Prettier, JupyterLab's
# rules; no warning allowed), `prettier --check`, and the Jest unit tests of
# the panel's model and job store (test/*.spec.ts). Runs all three and exits
# non-zero when any of them finds something.
#
# Idempotent and cached like build-labextension.sh, whose Node.js tooling and
# install it shares: `jlpm install --immutable` from Yarn's cache only when the
# package files changed; ESLint, Prettier and ts-jest keep caches of their own.
#
# Environment: PYTHON and JCT_CACHE, as for build-labextension.sh.
set -euo pipefail

# shellcheck source=labextension-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/labextension-env.sh"
log() { printf '[check-labextension] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

FAILED=()

gate() {  # NAME COMMAND...: run one check, remember it if it fails
    local name=$1 start=$SECONDS
    shift
    log "$name"
    if "$@"; then
        log "$name: ok in $((SECONDS - start)) s"
    else
        log "$name: FAILED in $((SECONDS - start)) s"
        FAILED+=("$name")
    fi
}

setup_node_tooling
install_node_modules 0
cd "$EXT"

gate eslint jlpm eslint:check
gate prettier jlpm prettier:check
gate jest jlpm test --ci

if [ "${#FAILED[@]}" -gt 0 ]; then
    die "failed: ${FAILED[*]}"
fi
log "all checks passed"
