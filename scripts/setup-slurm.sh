#!/usr/bin/env bash
# Install SLURM and munge from Debian for the SLURM kernel tests (idempotent).
#
# Only the programs are installed: no slurm.conf, and nothing is started. The test
# fixture (tests/slurm_cluster.py) runs a private single-node cluster — its own
# munged, slurmctld and slurmd with its own key, socket, ports and SLURM_CONF — so it
# never meets a cluster (or another test run) on the same machine. On a real cluster
# the site's SLURM is used as is and this script is not needed.
#
# The package scripts try to start the services; where a policy-rc.d forbids it (as
# on these machines) nothing runs. Without --no-install-recommends apt would pull in
# 43 packages instead of 8.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
PROGRAMS=(slurmctld slurmd sbatch srun squeue scancel sinfo munged mungekey munge)

log() { printf 'setup-slurm: %s\n' "$*" >&2; }

missing_programs() {
    local program
    for program in "${PROGRAMS[@]}"; do
        command -v "$program" >/dev/null 2>&1 || PATH="$PATH:/usr/sbin:/sbin" command -v "$program" >/dev/null 2>&1 || echo "$program"
    done
}

# The clients need a slurm.conf even for --version, so ask dpkg.
version() {
    dpkg-query -W -f='(slurm-client ${Version}, ' slurm-client 2>/dev/null || true
    dpkg-query -W -f='munge ${Version})' munge 2>/dev/null || true
}

main() {
    if [[ -z "$(missing_programs)" ]]; then
        log "SLURM and munge are installed $(version)"
        return
    fi
    if [[ $(id -u) -ne 0 ]]; then
        log "missing: $(missing_programs | tr '\n' ' '); run this script as root to install ${PACKAGES[*]}"
        exit 1
    fi
    log "installing ${PACKAGES[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    local still_missing
    still_missing="$(missing_programs)"
    [[ -z "$still_missing" ]] || { log "still missing after install: $still_missing"; exit 1; }
    log "SLURM and munge installed $(version)"
}

main "$@"
