#!/usr/bin/env bash
# Build the project's test/demo images in CondaTainer's layout.
#
#   scripts/build-images.sh [OUTDIR]
#
# Images are built into $JCT_CACHE/images (default
# /var/cache/jupyter-condatainer/images) and rebuilt only when their recipe
# changes: a hash of the image name, the source of the functions that build it
# and the recipe of the image it is built on is kept in <image>.recipe.
# With OUTDIR, the images and their .env sidecars are also made available
# there (hard links when possible, else copies).
#
#   ubuntu24--base_image.sif  Debian bookworm minbase + python3 (named after
#                             CondaTainer's default base image)
#   python--3.11.sqf (+.env)  venv with ipykernel at /cnt/python/3.11
#   hello--1.0.sqf (+.env)    tiny tool at /cnt/hello/1.0, with env sidecar
#   testenv.img               empty writable env overlay (/ext3/env), sparse
#
# Needs root (debootstrap, apptainer build); installs Apptainer first if
# missing (scripts/setup-apptainer.sh, a fast no-op otherwise).
set -euo pipefail
umask 022   # images are read by ordinary users later

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE_ROOT="${JCT_CACHE:-/var/cache/jupyter-condatainer}"
IMAGE_DIR="$CACHE_ROOT/images"
BASE_IMAGE=ubuntu24--base_image.sif
WORK_DIR=""   # per-run scratch space under $CACHE_ROOT (same file system)
BUILDING=""   # image being built, for the error message if a step fails

log() { printf 'build-images: %s\n' "$*" >&2; }
die() { printf 'build-images: ERROR: %s\n' "$*" >&2; exit 1; }

# Run a command with its output in LOGFILE; show the end of it on failure.
run_logged() {
    local logfile=$1; shift
    if ! "$@" >"$logfile" 2>&1; then
        tail -n 40 "$logfile" >&2
        die "failed: $*"
    fi
}

# Root on these VMs lacks CAP_SYS_RESOURCE (bit 24 of CapBnd); apptainer exec
# as root fails unless told to drop it. Set only when needed.
drop_missing_caps() {
    local bounding
    bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
    if (( (16#$bounding >> 24 & 1) == 0 )); then
        export APPTAINER_DROP_CAPS=CAP_SYS_RESOURCE
    fi
}

# Nothing from the host (environment, $HOME with its pip config, /tmp) leaks
# into a build step.
container_exec() {
    apptainer exec --containall --cleanenv "$@"
}

make_squashfs() {   # STAGE OUT: STAGE holds cnt/<name>/<version>/...
    run_logged "$1.log" mksquashfs "$1" "$2" -all-root -comp lz4 -noappend -no-progress
}

# Image builders: BUILDER OUT WORK writes the image to OUT (and an optional
# sidecar OUT.env), using WORK for scratch files.

build_base_image() {
    local out=$1 work=$2 rootfs="$2/rootfs" mirror
    mirror=$("$SCRIPT_DIR/setup-apptainer.sh" --print-mirror)
    mkdir -p "$CACHE_ROOT/debootstrap"   # downloaded .debs, reused next time
    run_logged "$work/debootstrap.log" debootstrap --variant=minbase \
        --include=python3,python3-venv --cache-dir="$CACHE_ROOT/debootstrap" \
        bookworm "$rootfs" "$mirror"
    strip_rootfs "$rootfs"
    APPTAINER_TMPDIR="$work" run_logged "$work/build.log" apptainer build "$out" "$rootfs"
}

# Halves the image; the container never runs apt, and debootstrap wrote the
# build host's mirror, resolver and host name into /etc.
strip_rootfs() {
    local root=$1
    rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
        "$root"/usr/share/locale/* "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*
    find "$root/var/log" -type f -delete
    printf '# empty: this image does not use apt\n' >"$root/etc/apt/sources.list"
    : >"$root/etc/resolv.conf"
    printf 'localhost\n' >"$root/etc/hostname"
}

build_python_overlay() {
    local out=$1 work=$2 wheels="$CACHE_ROOT/wheels/cp311"
    local venv="$work/stage/cnt/python/3.11"
    fetch_wheels "$wheels"
    mkdir -p "$venv"
    # Built inside the base image so the venv points at its /usr/bin/python3.
    run_logged "$work/venv.log" container_exec \
        --bind "$venv:/cnt/python/3.11" --bind "$wheels:/wheels:ro" \
        "$IMAGE_DIR/$BASE_IMAGE" sh -c '
            python3 -m venv /cnt/python/3.11 &&
            PIP_CONFIG_FILE=/dev/null /cnt/python/3.11/bin/pip install --no-cache-dir \
                --disable-pip-version-check --no-index --find-links /wheels ipykernel'
    make_squashfs "$work/stage" "$out"
    printf '#WHATIS:Python 3.11 with ipykernel (test image)\n' >"$out.env"
}

# Wheels for CPython 3.11 on glibc <= 2.36 (bookworm), downloaded on the host
# once; later runs reuse the wheelhouse. pip does not widen an explicit
# manylinux_2_X platform to older ones, so every glibc version is listed.
fetch_wheels() {
    local house=$1 want args=() minor
    args=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
          --platform manylinux2014_x86_64)
    for minor in $(seq 17 36); do
        args+=(--platform "manylinux_2_${minor}_x86_64")
    done
    want="ipykernel ${args[*]}"
    [[ -f $house/.complete && $(<"$house/.complete") == "$want" ]] && return 0
    python3 -m pip --version >/dev/null 2>&1 \
        || die "the host's python3 has no pip (apt-get install python3-pip)"
    mkdir -p "$house"
    run_logged "$WORK_DIR/pip-download.log" python3 -m pip download --disable-pip-version-check \
        "${args[@]}" -d "$house" ipykernel
    printf '%s\n' "$want" >"$house/.complete"
}

build_hello_overlay() {
    local out=$1 work=$2 bin="$2/stage/cnt/hello/1.0/bin"
    mkdir -p "$bin"
    cat >"$bin/hello" <<'EOF'
#!/bin/sh
echo "hello from condatainer"
if [ -n "${HELLO_GREETING:-}" ]; then
    echo "$HELLO_GREETING"
fi
EOF
    chmod 0755 "$bin/hello"
    make_squashfs "$work/stage" "$out"
    cat >"$out.env" <<'EOF'
#WHATIS:hello 1.0 - a tiny test tool
HELLO_HOME=/cnt/hello/1.0
HELLO_GREETING=hi from $HELLO_HOME
#ENVNOTE:HELLO_HOME=root of the hello tool
EOF
}

build_env_overlay() {
    run_logged "$2/overlay.log" apptainer overlay create --size 256 --sparse \
        --create-dir /ext3/env "$1"
}

recipe_of() {   # NAME DEPENDENCY FUNCTION...
    local name=$1 dependency=$2; shift 2
    {
        printf '%s\n' "$name"
        [[ $dependency == - ]] || cat "$IMAGE_DIR/$dependency.recipe"
        declare -f "$@"   # function source without comments
    } | sha256sum | cut -d' ' -f1
}

# ensure_image NAME DEPENDENCY BUILDER [HELPER...]
# Build NAME with BUILDER unless NAME.recipe matches. The recipe covers the
# source of BUILDER and HELPERs and the recipe of DEPENDENCY ("-" for none).
# Built in WORK_DIR and moved into place, so a failed build changes nothing.
ensure_image() {
    local name=$1 builder=$3 target="$IMAGE_DIR/$1" recipe work start
    recipe=$(recipe_of "$@")
    if [[ -f $target && -f $target.recipe && $(<"$target.recipe") == "$recipe" ]]; then
        log "$name: up to date"
        return 0
    fi
    log "$name: building"
    start=$SECONDS
    work="$WORK_DIR/$name.d"
    mkdir -p "$work"
    BUILDING=$name
    "$builder" "$work/$name" "$work"   # not under || : that would disable set -e in it
    BUILDING=""
    chmod 0644 "$work/$name"
    if [[ -f $work/$name.env ]]; then
        chmod 0644 "$work/$name.env"
        mv -f "$work/$name.env" "$target.env"
    else
        rm -f "$target.env"
    fi
    mv -f "$work/$name" "$target"
    printf '%s\n' "$recipe" >"$target.recipe"
    rm -rf --one-file-system "$work"
    log "$name: built in $((SECONDS - start)) s, $(du -h --apparent-size "$target" | cut -f1)"
}

# Make FILE available in DIR: a hard link if possible, else a copy; nothing
# if DIR already has the same content. A writable overlay is always copied and
# never replaced: users write into it, and that must not reach the cache.
publish() {
    local src=$1 dst="$2/${1##*/}" tmp
    tmp="$2/.${1##*/}.tmp.$$"
    if [[ $src == *.img ]]; then
        [[ -e $dst ]] && return 0
        cp --sparse=always "$src" "$tmp"
    else
        if [[ -e $dst ]] && { [[ $src -ef $dst ]] || cmp -s "$src" "$dst"; }; then
            return 0
        fi
        ln -f "$src" "$tmp" 2>/dev/null || cp "$src" "$tmp"
    fi
    mv -f "$tmp" "$dst"
}

cleanup() {
    local status=$?
    if [[ $status -ne 0 && -n $BUILDING ]]; then
        log "ERROR: building $BUILDING failed (exit $status); any previous $BUILDING is unchanged"
    fi
    [[ -z $WORK_DIR ]] || rm -rf --one-file-system "$WORK_DIR"
}

main() {
    local out_dir=${1:-} name
    [[ $EUID -eq 0 ]] || die "run as root (debootstrap and apptainer build need it)"
    "$SCRIPT_DIR/setup-apptainer.sh" >/dev/null
    drop_missing_caps

    mkdir -p "$IMAGE_DIR"
    # One build at a time; leftovers of a killed run are removed under the lock.
    exec 9>"$CACHE_ROOT/build-images.lock"
    flock 9
    rm -rf --one-file-system "$CACHE_ROOT"/work.*
    WORK_DIR=$(mktemp -d "$CACHE_ROOT/work.XXXXXX")
    trap cleanup EXIT

    ensure_image "$BASE_IMAGE" - build_base_image strip_rootfs
    ensure_image python--3.11.sqf "$BASE_IMAGE" build_python_overlay fetch_wheels make_squashfs
    ensure_image hello--1.0.sqf - build_hello_overlay make_squashfs
    ensure_image testenv.img - build_env_overlay

    if [[ -n $out_dir ]]; then
        mkdir -p "$out_dir"
        for name in "$BASE_IMAGE" python--3.11.sqf hello--1.0.sqf testenv.img; do
            publish "$IMAGE_DIR/$name" "$out_dir"
            [[ ! -f $IMAGE_DIR/$name.env ]] || publish "$IMAGE_DIR/$name.env" "$out_dir"
        done
        log "images available in $out_dir"
    fi
}

main "$@"
