#!/usr/bin/env bash
# Install headless Chromium from the OS packages for the HTML report's browser test
# (tests/test_report_html.py). Idempotent: nothing happens when `chromium` is already on PATH.
# Debian/Ubuntu with apt only; run as root (the test machines are). Quiet unless something fails.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_chromium.sh: chromium is not on PATH and apt-get is missing: install chromium by hand" >&2
    exit 1
fi
# Root runs apt-get directly; anyone else goes through sudo (which fails clearly when not allowed).
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# --no-install-recommends: the browser alone, without fonts and desktop extras it recommends.
$SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium >/dev/null 2>&1 || { echo "install_chromium.sh: chromium still not on PATH after apt-get" >&2; exit 1; }
