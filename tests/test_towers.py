"""The tower boundary: image size, patch grid and weight signature come from the tower adapter,
so every entry point works on every supported family (open_clip's ViT and timm towers)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import tca
import tca.eval as ev
from tca.eval.loop import _signature
from tca.explore import model_view
from tca.towers import OpenClipViT, TimmViT, tower_for

from .conftest import TINY

TIMM_TINY = "tca-tiny-timm-token"


@pytest.fixture(scope="module")
def timm_clip():
    return tca.load_model(TIMM_TINY, pretrained="none", seed=0)


def test_sizes_come_from_the_adapter(tiny_clip, timm_clip):
    visual = tiny_clip.model.visual
    assert tower_for(visual) is OpenClipViT
    assert OpenClipViT.patch_size(visual) == visual.conv1.kernel_size[0]
    assert OpenClipViT.image_size(visual) == tuple(visual.image_size)
    visual = timm_clip.model.visual
    assert tower_for(visual) is TimmViT
    assert TimmViT.grid(visual) == (14, 14) and TimmViT.patch_size(visual) == 16
    assert TimmViT.image_size(visual) == (224, 224)


def test_signature_tensors(tiny_clip, timm_clip):
    visual = tiny_clip.model.visual
    # open_clip: exactly what eval records hashed before the adapters (records stay resumable).
    w, proj = OpenClipViT.signature_tensors(visual)
    assert w is visual.conv1.weight and proj is visual.proj
    visual = timm_clip.model.visual
    w, last = TimmViT.signature_tensors(visual)
    assert w is visual.trunk.patch_embed.proj.weight
    assert last is list(visual.parameters())[-1]
    other = tca.load_model(TIMM_TINY, pretrained="none", seed=1).model.visual
    assert _signature(*TimmViT.signature_tensors(visual)) != _signature(
        *TimmViT.signature_tensors(other)
    )


@pytest.mark.parametrize("name", [TINY, TIMM_TINY])
def test_model_view_is_the_tower_input(name, tiny_clip, timm_clip, example_image):
    clip = tiny_clip if name == TINY else timm_clip
    view = model_view(clip, Image.open(example_image))
    assert view.shape == (224, 224, 3) and view.dtype == np.uint8


def test_eval_runs_on_a_timm_tower(timm_clip, tmp_path):
    root = tmp_path / "data"
    rng = np.random.default_rng(0)
    for cls in ("red", "blue"):
        (root / cls).mkdir(parents=True)
        for j in range(2):
            pixels = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / cls / f"{j}.png")
    result = ev.evaluate(
        timm_clip,
        ev.load_dataset(root),
        methods=("none", "tca"),
        keep_rates=(0.7,),
        batch_size=2,
        num_workers=0,
        progress=False,
        records_dir=tmp_path / "records",
        echo=lambda s: None,
    )
    assert [e["n_images"] for e in result["results"]] == [4, 4]
