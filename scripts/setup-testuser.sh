#!/usr/bin/env bash
# An ordinary (non-root) user for the second, unprivileged test run. Idempotent.
#
#   scripts/setup-testuser.sh [--no-subids] [USER]    (default: jctuser; run as root)
#
# - creates USER with a home directory (useradd -m) if missing;
# - gives USER /etc/subuid and /etc/subgid ranges (Apptainer's --fakeroot maps them),
#   in a free block when USER has none; with --no-subids, makes sure USER has none
#   (a user for whom --fakeroot falls back to a root-mapped user namespace);
# - makes /dev/fuse usable (squashfuse, fuse2fs and fuse-overlayfs mount the images);
# - makes a per-user cache directory under $JCT_CACHE/users/USER, owned by USER
#   (the supplied-ipykernel cache, pytest's basetemp);
# - checks that USER can read the repository and run the project's virtualenv.
#
# Prints USER's home directory on the last line.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SUBIDS=yes
if [[ ${1:-} == --no-subids ]]; then
    SUBIDS=no
    shift
fi
USER_NAME="${1:-jctuser}"
JCT_CACHE="${JCT_CACHE:-/var/cache/jupyter-condatainer}"
VENV="${JCT_VENV:-$JCT_CACHE/venv}"
SUB_COUNT=65536
SUB_MIN=100000

log() { printf 'setup-testuser: %s\n' "$*" >&2; }
die() { printf 'setup-testuser: ERROR: %s\n' "$*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "run as root (useradd, /etc/subuid)"

ensure_user() {
    if ! id -u "$USER_NAME" >/dev/null 2>&1; then
        log "creating user $USER_NAME"
        useradd -m -s /bin/bash "$USER_NAME"
    fi
}

# First start at or above SUB_MIN after every range already in FILE.
next_free_start() {
    awk -F: -v min="$SUB_MIN" 'NF >= 3 { end = $2 + $3; if (end > max) max = end }
        END { print (max > min ? max : min) }' "$1"
}

ensure_subids() {
    local file start uid
    uid=$(id -u "$USER_NAME")
    for file in /etc/subuid /etc/subgid; do
        touch "$file"
        if [[ $SUBIDS == no ]]; then
            if grep -qE "^(${USER_NAME}|${uid}):" "$file"; then
                log "removing $USER_NAME's range from $file"
                sed -i -E "/^(${USER_NAME}|${uid}):/d" "$file"
            fi
        elif ! grep -qE "^(${USER_NAME}|${uid}):" "$file"; then
            start=$(next_free_start "$file")
            log "adding $USER_NAME:$start:$SUB_COUNT to $file"
            printf '%s:%s:%s\n' "$USER_NAME" "$start" "$SUB_COUNT" >>"$file"
        fi
    done
}

open_dev_fuse() {
    [[ -e /dev/fuse ]] || die "/dev/fuse is missing: ordinary users cannot mount images"
    [[ $(stat -c %a /dev/fuse) == 666 ]] || chmod 0666 /dev/fuse
}

ensure_user_cache() {
    local dir="$JCT_CACHE/users/$USER_NAME"
    mkdir -p "$JCT_CACHE/users"
    chmod 0755 "$JCT_CACHE/users"
    install -d -m 0755 -o "$USER_NAME" -g "$(id -gn "$USER_NAME")" "$dir"
}

check_access() {
    runuser -u "$USER_NAME" -- test -r "$REPO/pyproject.toml" -a -x "$REPO/kernel_provider" \
        || die "$USER_NAME cannot read $REPO (the editable install points there): make it and its parents a+rX"
    runuser -u "$USER_NAME" -- "$VENV/bin/python" -c 'import kernel_provider' \
        || die "$USER_NAME cannot import kernel_provider with $VENV/bin/python"
}

ensure_user
ensure_subids
open_dev_fuse
ensure_user_cache
check_access
getent passwd "$USER_NAME" | cut -d: -f6
