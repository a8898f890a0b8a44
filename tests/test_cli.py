"""The `python -m tca` contract: JSON keys, numbers, and one clear line per bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tca.cli import main

from .conftest import HERE, ROOT, TINY

TINY_ARGS = ["--model", TINY, "--pretrained", "none"]


@pytest.fixture(autouse=True)
def _configs(monkeypatch):
    monkeypatch.setenv("TCA_MODEL_CONFIGS", str(HERE / "model_configs"))


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_json_contract(capsys, example_image):
    code, out, _ = _run(
        capsys,
        "predict",
        str(example_image),
        "--labels",
        "cat,dog,car",
        *TINY_ARGS,
        "--keep-rate",
        "0.7",
        "--json",
    )
    assert code == 0
    d = json.loads(out)
    assert d["labels"] == ["cat", "dog", "car"]
    for key in ("baseline", "condensed"):
        assert len(d[key]["probs"]) == 3 and sum(d[key]["probs"]) == pytest.approx(1.0, abs=1e-5)
    assert len(d["tokens_per_layer"]) == 12
    assert [d["tokens_per_layer"][i] for i in (3, 6, 9)] == [141, 100, 74]
    assert d["gmacs"]["baseline"] > d["gmacs"]["condensed"] > 0
    assert d["random_weights"] is True and "RANDOM" in d["model"]
    assert "GMACs" in d["gmacs"]["convention"]
    assert set(d["shift"]) == {"cat", "dog", "car"}
    assert d["settings"]["rate"] == pytest.approx(0.1)


def test_predict_text_output_warns_about_random_weights(capsys, example_image):
    code, out, _ = _run(
        capsys,
        "predict",
        str(example_image),
        "--labels",
        "cat, dog",
        *TINY_ARGS,
        "--method",
        "tome",
    )
    assert code == 0
    assert out.startswith("WARNING: random weights")
    assert "tokens per layer: [197, 197, 197, 178," in out
    d = json.loads(
        _run(
            capsys,
            "predict",
            str(example_image),
            "--labels",
            "cat, dog",
            *TINY_ARGS,
            "--method",
            "tome",
            "--json",
        )[1]
    )
    g = d["gmacs"]
    assert (
        f"GMACs baseline {g['baseline']:.3f}  condensed {g['condensed']:.3f}  saved "
        f"{g['saved_percent']:.1f}%  [{d['gmacs']['convention']}]"
    ) in out
    assert f"tokens per layer: {d['tokens_per_layer']}" in out


def test_flops_json_without_running_a_model(capsys):
    code, out, _ = _run(capsys, "flops", "--keep-rate", "0.9", "--json")
    assert code == 0
    d = json.loads(out)
    assert d["gmacs"]["baseline"] == pytest.approx(17.5635, abs=1e-3)
    assert d["gmacs"]["condensed"] == pytest.approx(15.45, rel=0.005)
    assert [d["tokens_per_layer"][i] for i in (3, 6, 9)] == [180, 163, 149]
    code, out, _ = _run(capsys, "flops", "--model", "ViT-L-14", "--keep-rate", "0.7")
    assert code == 0 and "saved 48.9%" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["predict", "{img}", "--labels", "cat"], "at least two candidate labels"),
        (["predict", "{img}", "--labels", ""], "no labels"),
        (["predict", "{img}", "--labels", "cat,dog,Cat"], "duplicate label: 'cat'"),
        (["predict", "{bad}", "--labels", "cat,dog"], "not a readable image"),
        (["predict", "missing.png", "--labels", "cat,dog"], "no such image file"),
        (["predict", "{img}", "--labels", "cat,dog", "--keep-rate", "1.5"], "keep rate must be in"),
        (["predict", "{img}", "--labels", "cat,dog", "--keep-rate", "0"], "keep rate must be in"),
        (
            ["predict", "{img}", "--labels", "cat,dog", "--layers", "3,20"],
            "layer index 20 is out of range",
        ),
        (
            ["predict", "{img}", "--labels", "cat,dog", "--layers", "a,b"],
            "comma-separated integers",
        ),
        (
            ["predict", "{img}", "--labels", "cat,dog", "--merge-centers", "50"],
            "larger than tier 2",
        ),
        (
            [
                "predict",
                "{img}",
                "--labels",
                "cat,dog",
                "--model",
                "tca-tiny-timm-avg",
                "--pretrained",
                "none",
            ],
            "no usable pooling signal",
        ),
        (
            ["predict", "{img}", "--labels", "cat,dog", "--model", "RN50", "--pretrained", "none"],
            "RN50 has no ViT vision tower",
        ),
        (["predict", "{img}", "--labels", "cat,dog", "--model", "nope"], "unknown open_clip model"),
        (["flops", "--merge-centers", "0"], "merge centres"),
    ],
)
def test_bad_input_gives_one_clear_line(capsys, tmp_path, example_image, argv, message):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    argv = [a.format(img=example_image, bad=bad) for a in argv]
    if argv[0] == "predict" and "--model" not in argv:
        argv += TINY_ARGS
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]
    assert "Traceback" not in err


def test_module_entry_point(example_image):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TCA_MODEL_CONFIGS=str(HERE / "model_configs"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "tca",
            "predict",
            str(example_image),
            "--labels",
            "a,b",
            *TINY_ARGS,
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["labels"] == ["a", "b"]
    proc = subprocess.run(
        [sys.executable, "-m", "tca", "predict", str(example_image), "--labels", "a"],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
