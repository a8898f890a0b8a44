#!/usr/bin/env bash
# The test command (quoted in README.md, run by .ci/run): set-up, then lint, types and the suite,
# offline. Extra arguments go to pytest. SKIP_SETUP=1 skips the set-up step.
set -euo pipefail
cd "$(dirname "$0")/.."

[ "${SKIP_SETUP:-0}" = 1 ] || bash scripts/setup.sh

# Lint: the whole repository (what pyproject.toml's [tool.ruff] leaves out is said there).
python3 -m ruff check .
# Format: the whole repository.
python3 -m ruff format --check .
# Types: the files listed in pyproject.toml's [tool.mypy].
python3 -m mypy

# Tests never touch the network.
export HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False TCA_BROWSER=/usr/bin/chromium
python3 -m pytest -q -p no:cacheprovider tests "$@"
