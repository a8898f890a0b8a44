"""Issue 16's server-side pieces of the page: a model change sets that model's default
condensing blocks (depth/4 x 1, 2, 3: the paper's 3/6/9 for 12 blocks, 6/12/18 for ViT-L/14)."""

from __future__ import annotations

import pytest

import app as app_module


@pytest.fixture(scope="module")
def tca_app():
    return app_module.build_demo("tca-tiny-ViT", "none", first_screen="none").tca_app


@pytest.mark.parametrize(
    "model, depth, blocks",
    [("ViT-B-16-quickgelu", 12, "3,6,9"), ("ViT-L-14-quickgelu", 24, "6,12,18")],
)
def test_a_model_change_sets_its_default_blocks(tca_app, model, depth, blocks):
    update = tca_app.model_layers(model)
    assert update["value"] == blocks
    assert update["label"] == f"Condensing blocks (0-based; default for {depth} blocks: {blocks})"


def test_an_unknown_model_leaves_the_blocks_alone(tca_app):
    assert tca_app.model_layers("no-such-model") == {"__type__": "update"}
