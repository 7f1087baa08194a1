#!/usr/bin/env bash
# Set everything up (cached) and open JupyterLab with the CondaTainer kernels.
#
# When no CondaTainer base image exists where CondaTainer looks, the locally
# built demo images (base image, python/3.11, hello/1.0) are put into the
# default user image directory, $XDG_DATA_HOME/condatainer/images.
#
#   scripts/lab.sh [jupyter lab arguments]     (default: port 8888 on localhost)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="$(bash "$REPO/scripts/setup.sh" | tail -n 1)"
export PATH="$BIN:$PATH"

has_base_image() {
    "$BIN/python" - <<'PY'
import sys
from kernel_provider.host.config import CondaTainerConfig
from kernel_provider.model.overlays import scan
config = CondaTainerConfig()
sys.exit(0 if scan(config.image_dirs, config.distro).base_image() else 1)
PY
}

if ! has_base_image; then
    USER_IMAGES="${XDG_DATA_HOME:-$HOME/.local/share}/condatainer/images"
    echo "lab: no CondaTainer base image found; installing the demo images into $USER_IMAGES" >&2
    bash "$REPO/scripts/build-images.sh" "$USER_IMAGES" >&2
fi

"$BIN/jupyter" condatainer kernelspecs sync
ROOT_FLAG=()
[[ $EUID -eq 0 ]] && ROOT_FLAG=(--allow-root)
exec "$BIN/jupyter" lab --no-browser "${ROOT_FLAG[@]}" "$@"
