#!/usr/bin/env bash
# Install Apptainer 1.4 on Debian bookworm (for tests and demos).
#
# Bookworm, bookworm-backports and trixie have no apptainer; Debian sid has one
# whose binaries need glibc >= 2.38 (bookworm: 2.36). So we take sid's package
# without registering it with dpkg, give its two executables a private copy of
# trixie's glibc (interpreter + DT_RPATH), and rebuild the one preload library
# with the host compiler. The system's apt sources and dpkg state stay as they
# are. See the project notes on Apptainer for how this was worked out.
#
#   setup-apptainer.sh                 install if needed, print the version
#   setup-apptainer.sh --print-mirror  print the Debian mirror apt uses here
#
# Idempotent: if apptainer (or singularity) already works, this only makes
# /dev/fuse usable by ordinary users and prints the version.
#
# Without root (a cluster login node, Binder): the same two packages, adapted
# the same way, go into a private prefix instead of / (Apptainer is
# relocatable when it has no setuid starter), linked as ~/.local/bin/apptainer.
# The helper packages must be there already (an admin installs them; Binder:
# binder/apt.txt), and the kernel must allow unprivileged user namespaces.
#
# Environment:
#   JCT_CACHE   cache root (default /var/cache/jupyter-condatainer); downloaded
#               .debs are kept under $JCT_CACHE/apptainer/ and reused (without
#               root: ~/.cache/jupyter-condatainer/apptainer, reusing root's
#               cached .debs when readable).
#   JCT_APPTAINER_PREFIX  install without root into this prefix (default
#               ~/.local/opt/apptainer), even when another apptainer works.
#   JCT_DEBIAN_MIRROR     Debian mirror URL when the machine's apt sources
#               name none (e.g. an Ubuntu image).
set -euo pipefail

CACHE_DIR="${JCT_CACHE:-/var/cache/jupyter-condatainer}/apptainer"
GLIBC_DIR=/opt/apptainer-glibc
INSTALL_ROOT=/   # where the package's usr/ and etc/ go
APPTAINER_LIBDIR=usr/lib/x86_64-linux-gnu/apptainer   # relative to /
EXECUTABLES=(usr/bin/apptainer "$APPTAINER_LIBDIR/bin/starter")
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
APT_USER_OPTS=(-o APT::Sandbox::User=root)   # root; without root: no locking, no dpkg status

# Helpers from bookworm: image tools, FUSE mounters for non-root use, and what
# apptainer's own package would depend on. gcc/libc6-dev rebuild the preload.
HELPER_PACKAGES=(
    patchelf squashfs-tools uidmap e2fsprogs fuse2fs squashfuse fuse-overlayfs
    fuse3 debootstrap containernetworking-plugins libseccomp2 libsqlite3-0
    ca-certificates gcc libc6-dev
)

log() { printf 'setup-apptainer: %s\n' "$*" >&2; }
die() { printf 'setup-apptainer: ERROR: %s\n' "$*" >&2; exit 1; }

# /dev/fuse is 0600 on some VMs; every non-root apptainer run then fails with
# "fuse: failed to open /dev/fuse: Permission denied". Not persistent: redo
# after a reboot (re-running this script does it).
open_dev_fuse() {
    if [[ ! -e /dev/fuse ]]; then
        log "warning: /dev/fuse is missing; ordinary users cannot mount images"
    elif [[ $(stat -c %a /dev/fuse) != 666 ]]; then
        if [[ $EUID -eq 0 ]]; then
            chmod 0666 /dev/fuse
        else
            log "warning: /dev/fuse is not mode 0666; run this script as root once"
        fi
    fi
}

# Print the version of a working apptainer/singularity; fail if there is none.
working_version() {
    local cmd
    for cmd in apptainer singularity; do
        if command -v "$cmd" >/dev/null 2>&1 && "$cmd" --version 2>/dev/null; then
            return 0
        fi
    done
    return 1
}

# Root on these VMs lacks CAP_SYS_RESOURCE (bit 24 of CapBnd); apptainer exec
# as root then fails until it is told to drop that capability.
hint_missing_sys_resource() {
    local bounding
    bounding=$(awk '/^CapBnd:/ {print $2}' /proc/self/status)
    if [[ $EUID -eq 0 ]] && (( (16#$bounding >> 24 & 1) == 0 )); then
        log "note: root lacks CAP_SYS_RESOURCE here; export" \
            "APPTAINER_DROP_CAPS=CAP_SYS_RESOURCE before 'apptainer exec/instance'"
    fi
}

# The Debian mirror the machine already uses for bookworm (not the security
# one), from deb822 .sources files or else the one-line sources.list.
debian_mirror() {
    local uri="${JCT_DEBIAN_MIRROR:-}" files=(/etc/apt/sources.list.d/*.sources)
    if [[ -n $uri ]]; then
        printf '%s\n' "${uri%/}"
        return 0
    fi
    if [[ -e ${files[0]} ]]; then
        uri=$(awk 'BEGIN { RS = ""; FS = "\n" }
            {
                uris = ""; suites = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { uris = $i;   sub(/^URIs:[ \t]*/, "", uris) }
                    if ($i ~ /^Suites:/) { suites = $i; sub(/^Suites:[ \t]*/, "", suites) }
                }
                if ((" " suites " ") ~ /[ \t]bookworm[ \t]/ && uris != "") {
                    split(uris, u, /[ \t]+/); print u[1]; exit
                }
            }' "${files[@]}")
    fi
    if [[ -z $uri && -f /etc/apt/sources.list ]]; then
        uri=$(awk '$1 == "deb" {
                i = 2
                if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                if ($(i + 1) == "bookworm") { print $i; exit }
            }' /etc/apt/sources.list)
    fi
    [[ -n $uri ]] || die "no bookworm entry found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set JCT_DEBIAN_MIRROR to a Debian mirror URL"
    printf '%s\n' "${uri%/}"
}

# shellcheck source=scripts/apt-packages.sh
source "$SCRIPT_DIR/apt-packages.sh"

install_helpers() {
    install_missing_packages "${HELPER_PACKAGES[@]}"
}

# apt-get with its own sources (sid + trixie), lists and cache, so the
# system's apt configuration is left untouched.
private_apt() {
    local apt_dir="$CACHE_DIR/apt"
    apt-get -q \
        -o Dir::Etc::SourceList="$apt_dir/sources.list" \
        -o Dir::Etc::SourceParts=/dev/null \
        -o Dir::Etc::Preferences=/dev/null \
        -o Dir::Etc::PreferencesParts=/dev/null \
        -o Dir::State::Lists="$apt_dir/lists" \
        -o Dir::Cache="$apt_dir/cache" \
        "${APT_USER_OPTS[@]}" \
        "$@"
}

# Download (once) sid's apptainer and trixie's libc6 into $CACHE_DIR/debs.
download_debs() {
    local debs="$CACHE_DIR/debs" apt_dir="$CACHE_DIR/apt" mirror
    if compgen -G "$debs/apptainer_*.deb" >/dev/null && compgen -G "$debs/libc6_*.deb" >/dev/null; then
        log "using cached packages in $debs"
        return 0
    fi
    mirror=$(debian_mirror)
    mkdir -p "$debs" "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial"
    cat >"$apt_dir/sources.list" <<EOF
deb [signed-by=$KEYRING] $mirror sid main
deb [signed-by=$KEYRING] $mirror trixie main
EOF
    log "fetching package lists for sid and trixie"
    private_apt update >/dev/null || die "apt-get update of the private sid/trixie sources failed"
    # Download into a temporary directory so a failure leaves no partial cache.
    local tmp="$debs/.download.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    (cd "$tmp" && private_apt download apptainer/sid libc6/trixie >/dev/null) \
        || { rm -rf "$tmp"; die "apt-get download of apptainer (sid) / libc6 (trixie) failed"; }
    mv "$tmp"/*.deb "$debs"/ && rmdir "$tmp"
    rm -rf "$apt_dir"   # 40+ MB of sid/trixie lists, not needed any more
}

newest_deb() {   # newest cached .deb of a package, by Debian version order
    local pkg=$1 best="" f
    for f in "$CACHE_DIR/debs/${pkg}"_*.deb; do
        if [[ -z $best ]] || dpkg --compare-versions \
            "$(dpkg-deb -f "$f" Version)" gt "$(dpkg-deb -f "$best" Version)"; then
            best=$f
        fi
    done
    [[ -n $best ]] || die "no cached ${pkg} .deb"
    printf '%s\n' "$best"
}

# Trixie's shared libraries into $GLIBC_DIR (replaced as a whole).
install_private_glibc() {
    local stage=$1 libdir
    dpkg-deb -x "$(newest_deb libc6)" "$stage/libc6"
    libdir="$stage/libc6/usr/lib/x86_64-linux-gnu"
    [[ -e $libdir/ld-linux-x86-64.so.2 ]] || die "libc6 package has no ld-linux-x86-64.so.2"
    rm -rf "$GLIBC_DIR.new"
    mkdir -p "$GLIBC_DIR.new"
    cp -a "$libdir"/. "$GLIBC_DIR.new"/
    rm -rf "$GLIBC_DIR"
    mv "$GLIBC_DIR.new" "$GLIBC_DIR"
}

# Unpack apptainer, adapt it in the staging copy, then copy it onto /. Done in
# this order so that a failure never leaves a half-working apptainer on PATH.
install_apptainer() {
    local stage=$1 root="$1/apptainer" exe
    dpkg-deb -x "$(newest_deb apptainer)" "$root"
    for exe in "${EXECUTABLES[@]}"; do
        [[ -f $root/$exe ]] || die "apptainer package has no /$exe"
        # --force-rpath writes DT_RPATH, which also applies to libraries that
        # glibc loads itself (NSS), so they come from the same private glibc.
        patchelf --set-interpreter "$GLIBC_DIR/ld-linux-x86-64.so.2" --force-rpath \
            --set-rpath "$GLIBC_DIR:/lib/x86_64-linux-gnu:/usr/lib/x86_64-linux-gnu" \
            "$root/$exe"
    done
    gcc -O2 -shared -fPIC -o "$root/$APPTAINER_LIBDIR/lib/offsetpreload.so" \
        "$SCRIPT_DIR/offsetpreload.c" -ldl || die "building offsetpreload.so failed"
    # --keep-directory-symlink: do not replace usrmerge links such as /lib.
    tar -C "$root" -cf - . | tar -C "$INSTALL_ROOT" -xf - --no-overwrite-dir --keep-directory-symlink
}

# The relocated layout: Apptainer derives its etc/ and var/ from the directory
# of its executables (usr/ and usr/lib/ here), so point those at the package's.
relocate_prefix() {
    local usr="$INSTALL_ROOT/usr"
    mkdir -p "$INSTALL_ROOT/var/lib/apptainer/mnt/session"
    ln -sfn ../etc "$usr/etc"
    ln -sfn ../var "$usr/var"
    ln -sfn ../../etc "$usr/lib/etc"
    ln -sfn ../../var "$usr/lib/var"
}

# Without root: the same steps into a private prefix, then a link on ~/.local/bin.
install_unprivileged() {
    local prefix=$1 tool missing=()
    for tool in dpkg-deb patchelf gcc apt-get mksquashfs unsquashfs squashfuse fuse2fs fuse-overlayfs newuidmap; do
        command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool || -x /sbin/$tool ]] || missing+=("$tool")
    done
    (( ${#missing[@]} == 0 )) || die "without root, these must be installed first (an admin, or binder/apt.txt): ${missing[*]} (packages: ${HELPER_PACKAGES[*]})"
    [[ -r $KEYRING ]] || die "$KEYRING is missing (package debian-archive-keyring)"
    if ! compgen -G "$CACHE_DIR/debs/apptainer_*.deb" >/dev/null || ! compgen -G "$CACHE_DIR/debs/libc6_*.deb" >/dev/null; then
        CACHE_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/jupyter-condatainer/apptainer"
        APT_USER_OPTS=(-o Debug::NoLocking=1 -o Dir::State::status=/dev/null)
        download_debs
    fi
    log "installing Apptainer into $prefix (no root)"
    STAGE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/setup-apptainer.XXXXXX")
    trap 'rm -rf "$STAGE_DIR"' EXIT
    rm -rf "$prefix.new"
    mkdir -p "$prefix.new"
    INSTALL_ROOT="$prefix.new/root"
    GLIBC_DIR="$prefix/glibc"   # the final path: it is written into the executables
    mkdir -p "$INSTALL_ROOT"
    install_private_glibc "$STAGE_DIR"
    mv "$GLIBC_DIR" "$prefix.new/glibc"
    install_apptainer "$STAGE_DIR"
    relocate_prefix
    rm -rf "$prefix"
    mv "$prefix.new" "$prefix"
    mkdir -p "$HOME/.local/bin"
    ln -sfn "$prefix/root/usr/bin/apptainer" "$HOME/.local/bin/apptainer"
    "$prefix/root/usr/bin/apptainer" --version || die "$prefix/root/usr/bin/apptainer does not run"
    [[ -r /dev/fuse && -w /dev/fuse ]] || log "warning: /dev/fuse is not usable by $(id -un): images cannot be mounted (an admin: chmod 0666 /dev/fuse)"
    log "Apptainer is in $prefix; ~/.local/bin/apptainer links to it (put ~/.local/bin on PATH)"
}

# Real checks: both executables load with the private glibc, the preload
# library loads into a host program, and apptainer runs.
check_install() {
    local exe
    for exe in "${EXECUTABLES[@]}"; do
        "$GLIBC_DIR/ld-linux-x86-64.so.2" --list "/$exe" >/dev/null \
            || die "/$exe cannot load its libraries"
    done
    LD_PRELOAD="/$APPTAINER_LIBDIR/lib/offsetpreload.so" /bin/true \
        || die "/$APPTAINER_LIBDIR/lib/offsetpreload.so does not load"
    apptainer --version || die "apptainer --version failed after installation"
}

main() {
    local prefix="${JCT_APPTAINER_PREFIX:-$HOME/.local/opt/apptainer}"
    if [[ $EUID -ne 0 && -n ${JCT_APPTAINER_PREFIX:-} && -x $prefix/root/usr/bin/apptainer ]]; then
        "$prefix/root/usr/bin/apptainer" --version
        return 0
    fi
    if [[ -z ${JCT_APPTAINER_PREFIX:-} ]] && working_version; then
        open_dev_fuse
        return 0
    fi
    if [[ $EUID -ne 0 ]]; then
        install_unprivileged "$prefix"
        return 0
    fi
    [[ $(dpkg --print-architecture) == amd64 ]] || die "only amd64 is supported"

    install_helpers
    download_debs
    STAGE_DIR=$(mktemp -d "${TMPDIR:-/tmp}/setup-apptainer.XXXXXX")
    trap 'rm -rf "$STAGE_DIR"' EXIT
    install_private_glibc "$STAGE_DIR"
    install_apptainer "$STAGE_DIR"
    open_dev_fuse
    check_install
    hint_missing_sys_resource
}

# --print-mirror: only print the machine's bookworm mirror (build-images.sh
# gives it to debootstrap).
if [[ ${1:-} == --print-mirror ]]; then
    debian_mirror
else
    main
fi
