#!/usr/bin/env bash
# The browser of tests/test_browser.py, idempotent: Debian's chromium, installed with apt only
# when /usr/bin/chromium is missing (a first run takes about half a minute, later runs nothing).
#
# The test drives it with Python playwright (the venv's `test` extra) through
# executable_path=/usr/bin/chromium. `playwright install` is never run: it downloads
# browser builds of its own, which cannot be fetched here.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

log() { printf 'setup-browser: %s\n' "$*" >&2; }

if [[ -x $CHROMIUM ]]; then
    exit 0
fi
if [[ $EUID -ne 0 ]]; then
    log "$CHROMIUM is missing and only root can install it (apt-get install chromium); tests/test_browser.py will fail"
    exit 0
fi
log "installing Debian's chromium"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
[[ -x $CHROMIUM ]] || { log "apt-get installed chromium but $CHROMIUM is missing"; exit 1; }
log "$("$CHROMIUM" --version 2>/dev/null || echo chromium) installed"
