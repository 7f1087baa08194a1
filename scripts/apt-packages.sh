# Sourced by the set-up scripts (not run): install what is missing of some Debian packages from
# the machine's own apt sources. Uses the caller's log and die.

# install_missing_packages PKG...: apt-get install those not installed yet (none: nothing happens).
install_missing_packages() {
    local pkg missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null | grep -qx installed \
            || missing+=("$pkg")
    done
    (( ${#missing[@]} )) || return 0
    log "installing from the machine's Debian sources: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Try the existing package lists first; refresh them only if that fails.
    if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -q >/dev/null || die "apt-get update failed"
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null \
            || die "apt-get install ${missing[*]} failed"
    fi
}
