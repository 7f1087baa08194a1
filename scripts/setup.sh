#!/usr/bin/env bash
# Everything the project needs on a fresh Debian machine, idempotent and cached:
# Apptainer, a Python virtualenv with the package (editable) and its test tools,
# and the locally built CondaTainer images. Re-runs take seconds.
#
# Usage: scripts/setup.sh            (prints the venv's bin dir on the last line)
# Environment:
#   JCT_CACHE  cache root (default /var/cache/jupyter-condatainer)
#   JCT_VENV   virtualenv (default $JCT_CACHE/venv)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export JCT_CACHE="${JCT_CACHE:-/var/cache/jupyter-condatainer}"
VENV="${JCT_VENV:-$JCT_CACHE/venv}"

log() { printf 'setup: %s\n' "$*" >&2; }

# Debian's python3 (not a per-user build under /root), so ordinary users can run the venv too.
system_python() {
    if [[ -x /usr/bin/python3 ]] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
        echo /usr/bin/python3
        return
    fi
    log "installing python3-venv"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3 python3-venv >/dev/null
    echo /usr/bin/python3
}

ensure_venv() {
    if [[ ! -x "$VENV/bin/python" ]]; then
        log "creating virtualenv $VENV"
        "$(system_python)" -m venv "$VENV"
    fi
    # Reinstall only when the project's requirements changed.
    local stamp="$VENV/.jct-requirements" want
    want="$(sha256sum "$REPO/pyproject.toml" | cut -d' ' -f1) $REPO"
    if [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
        log "installing jupyter-condatainer (editable) and test tools"
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -e "$REPO[test,lab]"
        echo "$want" >"$stamp"
    fi
    chmod -R a+rX "$VENV"
}

# pip copied the labextension into the venv when it installed the package (editable); a later
# build-labextension.sh rebuilds only kernel_provider/labextension. Keep the venv's copy, the one
# JupyterLab loads, identical to the build.
sync_labextension() {
    local built="$REPO/kernel_provider/labextension" installed="$VENV/share/jupyter/labextensions/jupyter-condatainer"
    if diff -rq "$built" "$installed" -x install.json >/dev/null 2>&1 && cmp -s "$REPO/labextension/install.json" "$installed/install.json"; then
        return
    fi
    log "installing the labextension build into $installed"
    rm -rf "$installed"
    mkdir -p "$installed"
    cp -R "$built/." "$installed/"
    cp "$REPO/labextension/install.json" "$installed/"
    chmod -R a+rX "$installed"
}

main() {
    mkdir -p "$JCT_CACHE"
    chmod 0755 "$JCT_CACHE"
    bash "$REPO/scripts/setup-apptainer.sh" >&2
    bash "$REPO/scripts/setup-singularityce.sh" >&2
    bash "$REPO/scripts/setup-slurm.sh" >&2
    ensure_venv
    PYTHON="$VENV/bin/python" bash "$REPO/scripts/build-labextension.sh" >&2
    sync_labextension
    bash "$REPO/scripts/setup-browser.sh" >&2
    bash "$REPO/scripts/build-images.sh" >&2
    echo "$VENV/bin"
}

main "$@"
