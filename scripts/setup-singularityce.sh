#!/usr/bin/env bash
# Install SingularityCE at /opt/singularityce next to Apptainer (for tests and demos).
#
# Debian has no SingularityCE. The project's shared tools hold a build of it from its
# source (prefix /opt/singularityce compiled in, no setuid, no network plugins); this
# unpacks it there and installs the runtime helpers its OCI mode needs from the
# machine's own Debian sources (runc, conmon, fuse-overlayfs, ...). Nothing of the
# Apptainer installation changes: SingularityCE stays off PATH, under its own prefix;
# point CNT_APPTAINER_BIN (or c.CondaTainerConfig.apptainer_bin) at
# /opt/singularityce/bin/singularity to use it.
#
#   setup-singularityce.sh   install if needed (root), print the version; without root it
#                            only says whether SingularityCE is there
#
# Idempotent: a stamp records which tarball was unpacked; a re-run with the same one
# only checks the helpers (about 0.1 s).
#
# Environment:
#   JCT_SINGULARITYCE_TARBALL  the build to install (default: the newest
#               ../shared/tools/singularityce/singularityce-*.tar.zst beside the repository)
set -euo pipefail

PREFIX=/opt/singularityce
STAMP="$PREFIX/.jct-tarball"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# What SingularityCE runs at run time; never crun (see the build's README: bookworm's
# crun fails, and SingularityCE prefers crun whenever it finds one).
RUNTIME_PACKAGES=(runc conmon fuse-overlayfs uidmap libfuse3-3 squashfs-tools zstd)

log() { printf 'setup-singularityce: %s\n' "$*" >&2; }
die() { printf 'setup-singularityce: ERROR: %s\n' "$*" >&2; exit 1; }

tarball() {
    if [[ -n ${JCT_SINGULARITYCE_TARBALL:-} ]]; then
        [[ -f $JCT_SINGULARITYCE_TARBALL ]] || die "JCT_SINGULARITYCE_TARBALL=$JCT_SINGULARITYCE_TARBALL is not a file"
        printf '%s\n' "$JCT_SINGULARITYCE_TARBALL"
        return
    fi
    local found
    found=$(ls -1 "$SCRIPT_DIR"/../../shared/tools/singularityce/singularityce-*.tar.zst 2>/dev/null | sort -V | tail -n1)
    printf '%s\n' "$found"
}

# shellcheck source=scripts/apt-packages.sh
source "$SCRIPT_DIR/apt-packages.sh"

warn_crun() {
    local path
    for path in /usr/bin/crun /usr/local/bin/crun /usr/sbin/crun; do
        if [[ -x $path ]]; then
            log "warning: $path is installed; SingularityCE's OCI mode prefers it over runc and" \
                "bookworm's crun fails ('unknown version specified'). Remove it for OCI mode."
        fi
    done
}

# Unpack beside the prefix, then swap it in: a failed unpack leaves the old install.
unpack() {
    local tar=$1 stage="$PREFIX.new.$$"
    log "unpacking $(basename "$tar") into $PREFIX"
    rm -rf "$stage" && mkdir -p "$stage"
    zstd -q -dc "$tar" | tar -x -C "$stage" || { rm -rf "$stage"; die "unpacking $tar failed"; }
    [[ -x $stage/singularityce/bin/singularity ]] || { rm -rf "$stage"; die "$tar has no singularityce/bin/singularity"; }
    rm -rf "$PREFIX.old"
    [[ -e $PREFIX ]] && mv "$PREFIX" "$PREFIX.old"
    mv "$stage/singularityce" "$PREFIX"
    rm -rf "$stage" "$PREFIX.old"
}

main() {
    local tar want
    tar=$(tarball)
    if [[ -z $tar ]]; then
        log "no SingularityCE build found (set JCT_SINGULARITYCE_TARBALL); skipping"
        return 0
    fi
    if [[ $EUID -ne 0 ]]; then   # its prefix is compiled in: only root can put it there
        if [[ -x $PREFIX/bin/singularity ]]; then
            "$PREFIX/bin/singularity" --version
        else
            log "SingularityCE is not installed and needs root to install at $PREFIX; skipping"
        fi
        return 0
    fi
    install_missing_packages "${RUNTIME_PACKAGES[@]}"
    warn_crun
    want="$(stat -c '%s %Y' "$tar") $(basename "$tar")"
    if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" || ! -x $PREFIX/bin/singularity ]]; then
        unpack "$tar"
        echo "$want" >"$STAMP"
    fi
    chmod -R a+rX "$PREFIX"
    "$PREFIX/bin/singularity" --version
}

main "$@"
