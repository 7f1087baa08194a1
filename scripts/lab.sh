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

# "New env" needs a conda channel. Without a site mirror (MAMBA_CHANNEL_ALIAS or
# CONDA_CHANNEL_ALIAS in this environment) the server uses the embedded local demo
# channel (tests/channel.py: zlib, python, demo-tool, …), so the demo works without
# network; set MAMBA_CHANNEL_ALIAS to your mirror (or to "" for the solver's default
# channels on the network) to use real packages.
if [[ -z ${MAMBA_CHANNEL_ALIAS+set} && -z ${CONDA_CHANNEL_ALIAS:-} ]]; then
    CACHE_ROOT="${JCT_CACHE:-$([[ $EUID -eq 0 ]] && echo /var/cache/jupyter-condatainer || echo "${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-condatainer")}"
    CHANNEL_ROOT="$(PYTHONPATH="$REPO/tests${PYTHONPATH:+:$PYTHONPATH}" "$BIN/python" -c \
        'import sys; from channel import ensure_channel; print(ensure_channel(sys.argv[1]))' "$CACHE_ROOT/channel")"
    export MAMBA_CHANNEL_ALIAS="file://$CHANNEL_ROOT"
    echo "lab: conda channels come from the local demo channel $CHANNEL_ROOT (set MAMBA_CHANNEL_ALIAS to use another)" >&2
fi

"$BIN/jupyter" condatainer kernelspecs sync
ROOT_FLAG=()
[[ $EUID -eq 0 ]] && ROOT_FLAG=(--allow-root)
exec "$BIN/jupyter" lab --no-browser "${ROOT_FLAG[@]}" "$@"
