#!/usr/bin/env bash
# Install what tests/test_server_demo_page.py drives: Debian's headless-capable Chromium and its
# ChromeDriver (/usr/bin/chromium, /usr/bin/chromedriver). No browser is downloaded at test time.
# Idempotent: apt runs only when one is missing, `apt-get update` at most once. Needs root (or
# sudo); where apt cannot install them, says why and the browser test skips.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
  echo "chromium present: $(chromium --version 2>/dev/null)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "installing: chromium chromium-driver"
$SUDO apt-get update -qq
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
  chromium chromium-driver >/dev/null
echo "chromium installed: $(chromium --version 2>/dev/null)"
