#!/usr/bin/env bash
# Build the project's test/demo images in CondaTainer's layout.
#
#   scripts/build-images.sh [OUTDIR]
#
# Images are built into $JCT_CACHE/images (default
# /var/cache/jupyter-condatainer/images) and rebuilt only when their recipe
# changes: a hash of the image name, the source of the functions that build it
# (and of the files it copies in) and the recipe of the image it is built on
# is kept in <image>.recipe.
# With OUTDIR, the images and their .env sidecars are also made available
# there (hard links when possible, else copies).
#
#   ubuntu24--base_image.sif  Debian bookworm minbase + python3 (named after
#                             CondaTainer's default base image), with
#                             CondaTainer's conda wrappers mm-create, mm-install,
#                             mm-remove, mm-update, mm-clean, mm-list in /usr/bin
#                             (py-rattler in /opt/cnt-mm instead of micromamba)
#   python--3.11.sqf (+.env)  venv with ipykernel at /cnt/python/3.11
#   hello--1.0.sqf (+.env)    tiny tool at /cnt/hello/1.0, with env sidecar
#   testenv.img               empty writable env overlay (/ext3/env), sparse
#
# As root, debootstrap builds the base image's root file system directly. An
# ordinary user gets the same steps in a user namespace with the user's
# /etc/subuid range and `apptainer build --fakeroot` (needs unprivileged user
# namespaces and subuid/subgid ranges); the default cache is then
# ~/.cache/jupyter-condatainer unless JCT_CACHE is set. Installs Apptainer first if missing (scripts/setup-apptainer.sh, a fast
# no-op otherwise).
set -euo pipefail
umask 022   # images are read by ordinary users later

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n ${JCT_CACHE:-} || $EUID -eq 0 ]]; then
    CACHE_ROOT="${JCT_CACHE:-/var/cache/jupyter-condatainer}"
else
    CACHE_ROOT="${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-condatainer"
fi
export PATH="$PATH:/usr/sbin:/sbin"   # debootstrap, chroot (not on an ordinary user's PATH)
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

# Every image is lz4: a kernel's first start reads its imports from a fresh
# mount, block by block, and gzip (mksquashfs's and apptainer build's default)
# takes about twice as long to decompress them.
SQUASHFS_COMPRESSION=lz4

make_squashfs() {   # STAGE OUT: STAGE holds cnt/<name>/<version>/...
    run_logged "$1.log" mksquashfs "$1" "$2" -all-root -comp "$SQUASHFS_COMPRESSION" -noappend -no-progress
}

# Image builders: BUILDER OUT WORK writes the image to OUT (and an optional
# sidecar OUT.env), using WORK for scratch files.

build_base_image() {
    local out=$1 work=$2
    build_rootfs "$work/rootfs" "$work"
    APPTAINER_TMPDIR="$work" run_logged "$work/build.log" \
        apptainer build --mksquashfs-args "-comp $SQUASHFS_COMPRESSION" "$out" "$work/rootfs"
}

# Without root: the same build_rootfs as root of a user namespace that maps the
# user's /etc/subuid range (unshare --map-auto), where debootstrap can chown and
# chroot (container=lxc: bind-mount /dev nodes instead of mknod); then
# `apptainer build --fakeroot` (the same mapping) packs it with its owners.
build_base_image_unprivileged() {
    local out=$1 work=$2 user
    user=$(id -un)
    grep -qE "^($user|$(id -u)):" /etc/subuid && grep -qE "^($user|$(id -u)):" /etc/subgid \
        || die "building the base image without root needs /etc/subuid and /etc/subgid ranges for $user (an admin adds them: usermod --add-subuids 100000-165535 --add-subgids 100000-165535 $user; pick a free range), or run as root"
    {
        printf '#!/bin/bash\nset -euo pipefail\numask 022\n'
        declare -p SCRIPT_DIR CACHE_ROOT WORK_DIR
        declare -f log die run_logged build_rootfs strip_rootfs install_mm_wrappers fetch_wheels
        printf 'build_rootfs "$1" "$2"\nfind "$1/dev" -maxdepth 1 -type f -delete\n'
    } >"$work/rootfs.sh"
    in_userns() { unshare --map-auto --map-root-user --mount --pid --fork "$@"; }
    run_logged "$work/rootfs.log" in_userns env container=lxc bash "$work/rootfs.sh" "$work/rootfs" "$work"
    APPTAINER_TMPDIR="$work" run_logged "$work/build.log" \
        apptainer build --fakeroot --mksquashfs-args "-comp $SQUASHFS_COMPRESSION" "$out" "$work/rootfs"
    remove_tree "$work/rootfs"
}

build_rootfs() {   # ROOTFS WORK: Debian minbase + python3 + the mm-* wrappers
    local rootfs=$1 work=$2 mirror
    mirror=$("$SCRIPT_DIR/setup-apptainer.sh" --print-mirror)
    mkdir -p "$CACHE_ROOT/debootstrap"   # downloaded .debs, reused next time
    run_logged "$work/debootstrap.log" debootstrap --variant=minbase \
        --include=python3,python3-venv --cache-dir="$CACHE_ROOT/debootstrap" \
        bookworm "$rootfs" "$mirror"
    strip_rootfs "$rootfs"
    install_mm_wrappers "$rootfs" "$work"
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

# CondaTainer's base images ship micromamba and shell wrappers around it
# (mm-create, mm-install, ...: micromamba -r "$CNT_CONDA_PREFIX" <command> -n
# base) in /usr/bin. micromamba and conda-forge cannot be downloaded here, so
# the same commands run scripts/mm/mm.py on py-rattler (a conda solver and
# installer from PyPI), in a venv of the image's own python at /opt/cnt-mm.
install_mm_wrappers() {
    local root=$1 work=$2 wheels="$CACHE_ROOT/wheels/cnt-mm" command
    local requirement=py-rattler==0.28.0   # the version scripts/mm/mm.py is tested with
    fetch_wheels "$wheels" "$requirement"
    rm -rf "$root/tmp/cnt-mm-wheels"
    cp -r "$wheels" "$root/tmp/cnt-mm-wheels"
    # The rootfs is not an image yet: chroot, with nothing from the host's environment.
    run_logged "$work/cnt-mm.log" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 \
        chroot "$root" sh -c '
            python3 -m venv /opt/cnt-mm &&
            PIP_CONFIG_FILE=/dev/null /opt/cnt-mm/bin/pip install --no-cache-dir \
                --disable-pip-version-check --no-index --find-links /tmp/cnt-mm-wheels "$1" &&
            /opt/cnt-mm/bin/python -c "import rattler"' sh "$requirement"
    rm -rf "$root/tmp/cnt-mm-wheels" "$root/root/.cache"
    install -m 0644 "$SCRIPT_DIR/mm/mm.py" "$root/opt/cnt-mm/mm.py"
    for command in create install remove update clean list; do
        printf '%s\n' '#!/bin/sh' \
            "# CondaTainer's mm-$command (test image: py-rattler instead of micromamba)" \
            "exec /opt/cnt-mm/bin/python -I /opt/cnt-mm/mm.py $command \"\$@\"" \
            >"$root/usr/bin/mm-$command"
        chmod 0755 "$root/usr/bin/mm-$command"
    done
}

build_python_overlay() {
    local out=$1 work=$2 wheels="$CACHE_ROOT/wheels/cp311"
    local venv="$work/stage/cnt/python/3.11"
    fetch_wheels "$wheels" ipykernel
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

# fetch_wheels HOUSE REQUIREMENT...: wheels for CPython 3.11 on glibc <= 2.36
# (bookworm), downloaded on the host once; later runs reuse the wheelhouse.
# pip does not widen an explicit manylinux_2_X platform to older ones, so
# every glibc version is listed.
fetch_wheels() {
    local house=$1 want args=() minor
    shift
    args=(--only-binary=:all: --python-version 3.11 --implementation cp --abi cp311
          --platform manylinux2014_x86_64)
    for minor in $(seq 17 36); do
        args+=(--platform "manylinux_2_${minor}_x86_64")
    done
    want="$* ${args[*]}"
    [[ -f $house/.complete && $(<"$house/.complete") == "$want" ]] && return 0
    python3 -m pip --version >/dev/null 2>&1 \
        || die "the host's python3 has no pip (apt-get install python3-pip)"
    mkdir -p "$house"
    run_logged "$WORK_DIR/pip-download.log" python3 -m pip download --disable-pip-version-check \
        "${args[@]}" -d "$house" "$@"
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

recipe_of() {   # NAME DEPENDENCY FUNCTION-OR-FILE...
    local name=$1 dependency=$2 part; shift 2
    {
        printf '%s\n' "$name" "$SQUASHFS_COMPRESSION"
        [[ $dependency == - ]] || cat "$IMAGE_DIR/$dependency.recipe"
        for part in "$@"; do
            if [[ $part == */* ]]; then
                cat "$part"          # a file the builder copies into the image
            else
                declare -f "$part"   # function source without comments
            fi
        done
    } | sha256sum | cut -d' ' -f1
}

# ensure_image NAME DEPENDENCY BUILDER [HELPER...]
# Build NAME with BUILDER unless NAME.recipe matches. The recipe covers the
# source of BUILDER and HELPERs (functions, or files given as paths with a /)
# and the recipe of DEPENDENCY ("-" for none).
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
    remove_tree "$work"
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
    [[ -z $WORK_DIR ]] || remove_tree "$WORK_DIR"
}

# rm -rf; without root, files of the subuid range's other ids (left by a failed
# unprivileged base build) are removed from inside a user namespace.
remove_tree() {
    rm -rf --one-file-system "$@" 2>/dev/null && return 0
    [[ $EUID -ne 0 ]] && unshare --map-auto --map-root-user rm -rf --one-file-system "$@"
}

main() {
    local out_dir=${1:-} name
    "$SCRIPT_DIR/setup-apptainer.sh" >/dev/null
    [[ $EUID -ne 0 ]] || drop_missing_caps

    mkdir -p "$IMAGE_DIR"
    # One build at a time; leftovers of a killed run are removed under the lock.
    exec 9>"$CACHE_ROOT/build-images.lock"
    flock 9
    remove_tree "$CACHE_ROOT"/work.*
    WORK_DIR=$(mktemp -d "$CACHE_ROOT/work.XXXXXX")
    trap cleanup EXIT

    local base_builder=build_base_image
    [[ $EUID -eq 0 ]] || base_builder=build_base_image_unprivileged
    ensure_image "$BASE_IMAGE" - "$base_builder" build_rootfs strip_rootfs install_mm_wrappers fetch_wheels \
        "$SCRIPT_DIR/mm/mm.py"
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
