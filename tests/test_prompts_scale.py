"""The paper's per-dataset prompt templates tied to the presets, and the correction's scale."""

from __future__ import annotations

import json

import pytest
import torch
from open_clip import zero_shot_metadata

from tca import prompts
from tca.cli import main
from tca.errors import ConfigError
from tca.prompts import TEMPLATES, resolve_templates
from tca.reservoir import PRESETS, RELEASED_LOGIT_SCALE, Reservoir, ReservoirConfig, stream_update

from .conftest import HERE, TINY


def test_protocol_templates():
    assert TEMPLATES is prompts.TEMPLATES
    assert TEMPLATES["oxford_pets"] == ("a photo of a {}, a type of pet.",)
    assert TEMPLATES["eurosat"] == ("a centered satellite photo of {}.",)
    assert TEMPLATES["dtd"] == ("{} texture.",)
    assert TEMPLATES["ucf101"] == ("a photo of a person doing {}.",)
    assert TEMPLATES["food101"] == ("a photo of {}, a type of food.",)
    assert TEMPLATES["fgvc_aircraft"] == ("a photo of a {}, a type of aircraft.",)
    assert TEMPLATES["oxford_flowers"] == ("a photo of a {}, a type of flower.",)
    for name in ("caltech101", "stanford_cars", "sun397"):
        assert TEMPLATES[name] == ("a photo of a {}.",)
    seven = (
        "itap of a {}.",
        "a bad photo of the {}.",
        "a origami {}.",
        "a photo of the large {}.",
        "a {} in a video game.",
        "art of the {}.",
        "a photo of the small {}.",
    )
    openai = tuple(t("{}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
    assert TEMPLATES["imagenet7"] == seven and set(seven) <= set(openai)
    assert len(TEMPLATES["imagenet80"]) == 80
    for name in ("imagenet", "imagenet_a", "imagenet_v2", "imagenet_r", "imagenet_sketch"):
        assert TEMPLATES[name] == seven
    assert all("{}" in t for ts in TEMPLATES.values() for t in ts)


def test_every_preset_implies_a_template_set():
    assert set(prompts.PRESET_TEMPLATES) == set(PRESETS)
    assert prompts.templates_for("eurosat") == "eurosat"
    assert prompts.templates_for("eurosat", "single") == "single"  # --templates wins
    assert prompts.templates_for("default") == "single"
    assert prompts.templates_for(None) == "single"
    assert resolve_templates(prompts.templates_for("oxford_pets")) == TEMPLATES["oxford_pets"]
    with pytest.raises(ConfigError, match="unknown preset 'mnist'"):
        prompts.templates_for("mnist")


@pytest.fixture
def _configs(monkeypatch):
    monkeypatch.setenv("TCA_MODEL_CONFIGS", str(HERE / "model_configs"))


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--preset", "eurosat"], "eurosat"),
        (["--preset", "eurosat", "--templates", "imagenet80"], "imagenet80"),
        ([], "single"),
    ],
)
def test_predict_preset_selects_templates(_configs, capsys, example_image, extra, expected):
    code = main(
        [
            "predict",
            str(example_image),
            "--labels",
            "forest,river",
            "--model",
            TINY,
            "--pretrained",
            "none",
            "--json",
            *extra,
        ]
    )
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["templates"] == expected


def _stream(logits, cls, scale=None):
    res = Reservoir(3, ReservoirConfig(size=2, lambd=4.0, beta=5.0))
    out = [
        stream_update(res, cls[i : i + 1], logits[i : i + 1], logit_scale=scale)
        for i in range(len(logits))
    ]
    return torch.cat(out), res


def test_correction_follows_the_models_logit_scale():
    g = torch.Generator().manual_seed(0)
    cos = torch.rand(6, 3, generator=g) * 0.3
    cls = torch.randn(6, 12, 8, generator=g)
    at_100, res_100 = _stream(RELEASED_LOGIT_SCALE * cos, cls)
    s = 14.2857  # open_clip's logit scale at random initialisation
    at_s, res_s = _stream(s * cos, cls, scale=s)
    # the same reservoir (entropies at the released scale) and corrected logits scaled by s/100
    assert [[e.step for e in b] for b in res_s.buckets] == [
        [e.step for e in b] for b in res_100.buckets
    ]
    for b_s, b_100 in zip(res_s.buckets, res_100.buckets):  # float32 rounding of s/100 only
        assert [e.entropy for e in b_s] == pytest.approx([e.entropy for e in b_100], rel=1e-5)
    torch.testing.assert_close(at_s, at_100 * (s / RELEASED_LOGIT_SCALE))
    assert torch.equal(at_s.argmax(-1), at_100.argmax(-1))
    # at the released scale nothing changes
    same, _ = _stream(RELEASED_LOGIT_SCALE * cos, cls, scale=RELEASED_LOGIT_SCALE)
    torch.testing.assert_close(same, at_100)
    with pytest.raises(ValueError, match="logit scale"):
        stream_update(Reservoir(3), cls[:1], cos[:1], logit_scale=0.0)


def test_flops_cli_for_the_new_methods(capsys):
    assert main(["flops", "--method", "tome-paper", "--keep-rate", "0.7", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["gmacs"]["condensed"] == pytest.approx(11.424066984) and not d["adaptive"]
    assert main(["flops", "--method", "ats", "--keep-rate", "0.7"]) == 0
    out = capsys.readouterr().out
    assert "upper bound" in out and "139" in out
