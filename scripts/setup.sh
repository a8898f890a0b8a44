#!/usr/bin/env bash
# Installs what the tests and checks need: Debian packages (when missing) and requirements-dev.txt.
# Run by scripts/test.sh; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: a browser for the Playwright test and Tux Paint's photos for the eval smoke test.
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
[ -d /usr/share/tuxpaint/stamps ] || missing+=(tuxpaint-stamps-default)
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m pip install -q -r requirements-dev.txt
