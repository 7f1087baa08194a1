#!/usr/bin/env bash
# The CondaTainer demo for an ordinary user (Binder's notebook user, or anyone without
# root), idempotent and cached under ~/.cache/jupyter-condatainer ($JCT_CACHE):
#
#   1. Apptainer: scripts/setup-apptainer.sh, which without root puts a private copy into
#      ~/.local/opt/apptainer (linked as ~/.local/bin/apptainer) unless one already works;
#   2. the demo images (base image, python/3.11, hello/1.0): scripts/build-images.sh, which
#      without root builds the base image in a user namespace (needs an /etc/subuid range),
#      published into CondaTainer's user image directory
#      ${XDG_DATA_HOME:-~/.local/share}/condatainer/images;
#   3. the kernelspecs: `jupyter condatainer kernelspecs sync` ("CondaTainer: python/3.11").
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export PATH="$HOME/.local/bin:$PATH"
export JCT_CACHE="${JCT_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-condatainer}"

bash "$REPO/scripts/setup-apptainer.sh" >&2
bash "$REPO/scripts/build-images.sh" "${XDG_DATA_HOME:-$HOME/.local/share}/condatainer/images"
jupyter condatainer kernelspecs sync
