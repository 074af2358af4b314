#!/usr/bin/env bash
# Headless Chromium for the browser test (tests/api/test_page.py), from Debian packages.
# Playwright drives it through executable_path=/usr/bin/chromium; `playwright install`
# (a browser download) is never needed. Idempotent: does nothing when Chromium is there.
set -euo pipefail

if [ -x /usr/bin/chromium ]; then
    echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    SUDO=sudo
else
    SUDO=
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core
/usr/bin/chromium --version
