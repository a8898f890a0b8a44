#!/usr/bin/env bash
# The test command (quoted in README.md, run by .ci/run): set-up, then lint, types and the suite,
# offline. Extra arguments go to pytest. SKIP_SETUP=1 skips the set-up step.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh

python3 -m ruff check tca
python3 -m ruff format --check tca
python3 -m mypy

# Tests never touch the network.
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TCA_BROWSER=/usr/bin/chromium
python3 -m pytest -q -p no:cacheprovider tests "$@"
