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

# shellcheck source=labextension-env.sh
source "$(dirname "${BASH_SOURCE[0]}")/labextension-env.sh"
log() { printf '[build-labextension] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

OUT="$ROOT/kernel_provider/labextension"
BUILD_STAMP="$EXT/node_modules/.condatainer-build-stamp"
FORCE=0

for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument: $arg" ;;
    esac
done

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

check_versions
setup_node_tooling
install_node_modules "$FORCE"
cd "$EXT"

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
