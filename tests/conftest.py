"""Shared fixtures. Everything runs offline on randomly initialised open_clip models:
a tiny 12-block ViT (width 64) for speed, and the real ViT-B/16 shape where counts matter."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import open_clip  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import settings  # noqa: E402

# CI runs the same examples every time (no flaky first sighting of a counterexample there);
# locally hypothesis explores new examples on each run.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "default")

HERE = Path(__file__).parent
ROOT = HERE.parent
TINY = "tca-tiny-ViT"  # registered from tests/model_configs
open_clip.add_model_config(HERE / "model_configs")
# OMP_NUM_THREADS wins: mutation testing forks a worker per mutant, and a forked child must not
# inherit an OpenMP pool (it hangs); it runs with OMP_NUM_THREADS=1.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, min(2, os.cpu_count() or 1))))


@pytest.fixture(scope="session")
def tiny_clip():
    import tca

    return tca.load_model(TINY, pretrained="none", seed=0)


@pytest.fixture(scope="session")
def b16_clip():
    import tca

    return tca.load_model("ViT-B-16-quickgelu", pretrained="none", seed=0)


@pytest.fixture(scope="session")
def example_image() -> Path:
    """A real photo shipped with the repo (CC0, see assets/CREDITS.md)."""
    images = sorted((ROOT / "assets").glob("*.jpg")) + sorted((ROOT / "assets").glob("*.png"))
    if not images:
        pytest.skip("no example images in assets/")
    return images[0]


@pytest.fixture
def artifacts_dir() -> Path:
    out = ROOT / "artifacts"
    out.mkdir(exist_ok=True)
    return out
