#!/usr/bin/env bash
# Installs what the tests need and runs them, offline. Used by .ci/run and quoted in README.md.
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

# Tests never touch the network.
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TCA_BROWSER=/usr/bin/chromium
python3 -m pytest -q -p no:cacheprovider tests "$@"
