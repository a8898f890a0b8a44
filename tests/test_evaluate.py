"""`python -m tca eval` and `tca.eval`: offline, tiny random-weight ViT, real images on disk.

Accuracy is never asserted (random weights); the protocol, files and invariants are."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import tca
import tca.eval as ev
import tca.eval.loop
import tca.eval.records
from tca.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent
TINY = "tca-tiny-ViT"
STAMPS = Path("/usr/share/tuxpaint/stamps")
COMPARED = (
    "k",
    "path",
    "label",
    "pred",
    "top",
    "gmacs",
    "pred_corrected",
    "top_corrected",
    "anchors",
    "error",
)


def _image(seed: int, mode: str, size: tuple[int, int]) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    arr[size[1] // 4 : size[1] // 2, :, :3] = rng.integers(0, 256, 3, dtype=np.uint8)
    img = Image.fromarray(arr, "RGBA")
    return img if mode == "RGBA" else img.convert(mode)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """3 classes x 3 images (RGB JPEG, RGBA PNG, greyscale PNG), one corrupt .jpg, one non-image
    file and a hidden folder (both ignored)."""
    root = tmp_path_factory.mktemp("data") / "folder"
    seed = 0
    for cls in ("red_apple", "blue_sky", "green_leaf"):
        d = root / cls
        d.mkdir(parents=True)
        for j, (mode, ext) in enumerate((("RGB", "jpg"), ("RGBA", "png"), ("L", "png"))):
            seed += 1
            _image(seed, mode, (40 + 30 * j, 60 + 10 * seed)).save(d / f"img{j}.{ext}")
    (root / "green_leaf" / "broken.jpg").write_bytes(b"this is not a JPEG file")
    (root / "blue_sky" / "notes.txt").write_text("not an image")
    (root / ".hidden").mkdir()
    _image(99, "RGB", (32, 32)).save(root / ".hidden" / "x.png")
    return root


@pytest.fixture(scope="module")
def clip():
    """Our own instance (evaluate patches it), so the shared session fixture stays untouched."""
    return tca.load_model(TINY, pretrained="none", seed=0)


def _run(clip, folder, records=None, **kw):
    kw = {
        "methods": ("none", "tca", "evit", "tome"),
        "keep_rates": (0.7,),
        "batch_size": 4,
        "num_workers": 0,
        "progress": False,
        "records_dir": records,
        "echo": lambda s: None,
    } | kw
    return ev.evaluate(clip, ev.load_dataset(folder), **kw)


def _records(records_dir: Path) -> dict[str, list[dict]]:
    out = {}
    for f in sorted(records_dir.glob("*.jsonl")):
        lines = f.read_text().splitlines()
        assert "header" in json.loads(lines[0])
        out[f.name.split(".rep")[0] + ".rep" + f.name.split(".rep")[1].split(".")[0]] = [
            json.loads(l) for l in lines[1:]
        ]
    return out


def _strip(recs: list[dict]) -> list[dict]:
    return [{k: r[k] for k in COMPARED if k in r} for r in recs]


@pytest.fixture(scope="module")
def reference(clip, folder, tmp_path_factory):
    """One uninterrupted evaluation with records on disk."""
    records = tmp_path_factory.mktemp("reference") / "records"
    result = _run(clip, folder, records)
    return result, _records(records)


# ------------------------------------------------------------------------------------------
# Datasets


def test_folder_layout(folder):
    ds = ev.load_dataset(folder)
    assert ds.labels == ["blue sky", "green leaf", "red apple"]  # sorted folders, _ -> space
    assert len(ds) == 10  # 9 images + the corrupt .jpg; notes.txt and .hidden/ are ignored
    assert ds.ignored_files == 1
    assert [ds.labels[t] for t in ds.targets].count("green leaf") == 4
    assert all(
        ds.labels[t].replace(" ", "_") == p.parent.name for p, t in zip(ds.paths, ds.targets)
    )


def test_manifests(folder, tmp_path):
    ds = ev.load_dataset(folder)
    rel = [p.relative_to(folder).as_posix() for p in ds.paths]
    labels = [ds.labels[t] for t in ds.targets]
    csv_path = folder.parent / "with_header.csv"
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "path"])
        w.writerows([(l, "folder/" + p) for p, l in zip(rel, labels)])
    m = ev.load_dataset(csv_path)
    assert (
        m.kind == "csv"
        and m.labels == ds.labels
        and m.paths == ds.paths
        and m.targets == ds.targets
    )
    bare = folder / "bare.csv"  # no header: path,label; relative to the manifest's folder
    bare.write_text("".join(f"{p},{l}\n" for p, l in zip(rel, labels)))
    assert ev.load_dataset(bare).paths == ds.paths
    js = folder.parent / "m.json"
    js.write_text(
        json.dumps(
            {
                "labels": ["red apple", "blue sky", "green leaf", "cloud"],
                "images": [{"path": "folder/" + p, "label": l} for p, l in zip(rel, labels)],
            }
        )
    )
    j = ev.load_dataset(js)
    assert j.labels == [
        "red apple",
        "blue sky",
        "green leaf",
        "cloud",
    ]  # given order, extra label kept
    assert [j.labels[t] for t in j.targets] == labels
    js.write_text(json.dumps([[rel[0], "dog"], [rel[1], "cat"]]))
    assert ev.load_dataset(js).labels == ["cat", "dog"]
    js.write_text(json.dumps({"labels": ["cat"], "images": [[rel[0], "dog"]]}))
    with pytest.raises(ev.EvalError, match='not in its "labels" list'):
        ev.load_dataset(js)
    bad = tmp_path / "bad.csv"
    bad.write_text("path,species\na.jpg,cat\n")
    with pytest.raises(ev.EvalError, match="label column"):
        ev.load_dataset(bad)


def test_dataset_errors(tmp_path):
    with pytest.raises(ev.EvalError, match="no such folder or manifest"):
        ev.load_dataset(tmp_path / "missing")
    _image(1, "RGB", (8, 8)).save(tmp_path / "loose.png")
    with pytest.raises(ev.EvalError, match="no class sub-folders.*1 loose image"):
        ev.load_dataset(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(ev.EvalError, match="no image files"):
        ev.load_dataset(tmp_path)


def test_empty_class_folders_and_dangling_links_are_reported(clip, tmp_path, capsys):
    root = tmp_path / "data"
    for c, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir(parents=True)
        for j in range(2):
            _image(10 * c + j, "RGB", (32, 40)).save(root / cls / f"{j}.png")
    (root / "empty_class").mkdir()
    (root / "only_notes").mkdir()
    (root / "only_notes" / "readme.txt").write_text("no images here")
    (root / "dog" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    ds = ev.load_dataset(root)
    assert ds.labels == ["cat", "dog"]  # empty folders are not candidate labels...
    assert ds.empty_classes == ["empty_class", "only_notes"]  # ... but reported
    assert ds.dangling_links == 1 and ds.ignored_files == 1
    assert [ds.rel(i) for i in range(len(ds))] == [
        "cat/0.png",
        "cat/1.png",
        "dog/0.png",
        "dog/1.png",
        "dog/gone.jpg",
    ]
    assert ds.targets == [0, 0, 1, 1, 1]
    manifest = root / "m.csv"
    manifest.write_text("cat/0.png,cat\ndog/gone.jpg,dog\n")
    assert ev.load_dataset(manifest).dangling_links == 1
    manifest.unlink()
    said: list[str] = []
    result = _run(clip, root, methods=("none", "tca"), echo=said.append)
    assert said == [
        "warning: ignored 2 empty class folder(s) (no images, so not candidate "
        "labels): empty_class, only_notes"
    ]
    d = result["dataset"]
    assert d["empty_class_folders"] == ["empty_class", "only_notes"] and d["dangling_links"] == 1
    assert d["unreadable"] == 1 and d["unreadable_files"] == ["dog/gone.jpg"]
    assert [(e["n_images"], e["unreadable"]) for e in result["results"]] == [(4, 1), (4, 1)]
    err = capsys.readouterr().err
    assert (
        err.count(
            "skipped unreadable image dog/gone.jpg: gone.jpg is a symbolic link to a missing file"
        )
        == 1
    )
    table = ev.format_table(result)
    assert "skipped 1 unreadable image(s): dog/gone.jpg" in table
    assert "1 of them: symbolic link(s) to missing files" in table
    assert "ignored 2 empty class folder(s)" in table


def test_a_bug_while_preprocessing_is_not_counted_as_an_unreadable_image(clip, folder):
    import dataclasses

    def broken(image):
        raise ZeroDivisionError("a bug in the transform")

    with pytest.raises(ZeroDivisionError, match="a bug in the transform"):
        _run(dataclasses.replace(clip, preprocess=broken), folder, methods=("none",))


def test_options_are_checked_in_one_place_before_any_model(folder, capsys):
    with pytest.raises(ev.EvalError, match="--batch-size must be >= 1, got 0"):
        ev.EvalOptions(batch_size=0)
    with pytest.raises(tca.ConfigError, match=r"keep rate must be in \(0, 1\], got 1.5"):
        ev.EvalOptions(keep_rates=(1.5,))
    with pytest.raises(tca.ConfigError, match="unknown preset 'nope'"):
        ev.EvalOptions(preset="nope")
    with pytest.raises(tca.InputError, match="unknown templates 'nope'"):
        ev.EvalOptions(templates="nope")
    with pytest.raises(ev.EvalError, match="--limit must be >= 1, got 0"):
        ev.EvalOptions(limit=0)
    options = ev.EvalOptions(methods=("TCA", "none", "tca"), keep_rates=(0.7, 0.7))
    assert [s.key for s in options.settings] == ["tca-R0.7", "none"]
    assert options.orders(5) == ev.stream_orders(5, 0, 1, None)
    # the CLI checks them before loading a model: this model name does not even exist
    rc = cli_main(["eval", str(folder), "--model", "ViT-Q-99", "--batch-size", "0"])
    assert rc == 2 and capsys.readouterr().err.strip() == "error: --batch-size must be >= 1, got 0"


def test_inputs_and_text_go_to_the_model_device(clip, folder, monkeypatch):
    """On the CPU (an explicit device): every forward gets its pixels on the model's device and
    the logits use text embeddings from the same device."""
    clip_cpu = tca.load_model(TINY, pretrained="none", seed=0, device="cpu")
    ds = ev.load_dataset(folder)
    ctx = tca.eval.loop._context(clip_cpu, ds, ds.labels, "single")
    assert ctx.device == torch.device("cpu") and ctx.text.device == ctx.device
    assert ctx.text.shape == (3, clip_cpu.model.text_projection.shape[1])
    seen = []
    real = tca.eval.loop.encode

    def spy(model, x, config, **kw):
        seen.append((x.device, next(model.parameters()).device, x.shape[0]))
        return real(model, x, config, **kw)

    monkeypatch.setattr(tca.eval.loop, "encode", spy)
    result = _run(clip_cpu, folder, methods=("tca",))
    assert len(seen) == 3 and sum(n for _, _, n in seen) == 9  # 10 images (1 corrupt), batch 4
    assert all(a == b == torch.device("cpu") for a, b, _ in seen)
    assert result["machine"]["device"] == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_evaluation_matches_the_cpu_protocol(folder, reference):
    gpu = tca.load_model(TINY, pretrained="none", seed=0, device="cuda")
    result = _run(gpu, folder)
    assert result["machine"]["device"].startswith("cuda")
    ref = reference[0]["results"]
    assert [e["setting"] for e in result["results"]] == [e["setting"] for e in ref]
    for e, r in zip(result["results"], ref):
        assert (e["n_images"], e["unreadable"]) == (r["n_images"], r["unreadable"])
        assert e["gmacs_analytic"] == r["gmacs_analytic"] and e["top5"] == 100.0


def test_stream_orders():
    a = ev.stream_orders(20, shuffle_seed=3, repeats=3, limit=8)
    assert a == ev.stream_orders(20, shuffle_seed=3, repeats=3, limit=8)  # deterministic
    assert all(sorted(o) == sorted(a[0]) for o in a)  # the same subset in every repeat
    assert len(a[0]) == 8 and len(set(map(tuple, a))) == 3  # ... in different orders
    assert ev.stream_orders(5, shuffle_seed=None) == [[0, 1, 2, 3, 4]]
    with pytest.raises(ev.EvalError, match="needs shuffled"):
        ev.stream_orders(5, shuffle_seed=None, repeats=2)


# ------------------------------------------------------------------------------------------
# The protocol


def test_same_order_counts_and_gmacs(clip, folder, reference):
    result, records = reference
    ds = ev.load_dataset(folder)
    assert set(records) == {"none.rep0", "tca-R0.7.rep0", "evit-R0.7.rep0", "tome-R0.7.rep0"}
    orders = {name: [r["path"] for r in recs] for name, recs in records.items()}
    first = next(iter(orders.values()))
    assert all(o == first for o in orders.values())  # every method saw the same stream
    assert sorted(first) == sorted(ds.rel(i) for i in range(len(ds)))
    assert first != [ds.rel(i) for i in range(len(ds))]  # shuffled (seed 0), not file order
    for recs in records.values():
        assert [r["k"] for r in recs] == list(range(10))
        bad = [r for r in recs if "error" in r]
        assert [r["path"] for r in bad] == ["green_leaf/broken.jpg"]
        assert "not a readable image" in bad[0]["error"]
    assert result["dataset"]["unreadable"] == 1
    assert result["dataset"]["unreadable_files"] == ["green_leaf/broken.jpg"]
    geom = tca.flops.Geometry.from_model(clip.model)
    base = tca.macs_for(geom, tca.CondenseConfig(method="none")).gmacs
    for e in result["results"]:
        assert e["n_images"] == 9 and e["unreadable"] == 1
        cfg = tca.CondenseConfig(method=e["method"], keep_rate=e["keep_rate"] or 0.9)
        recs = records[ev.Setting(e["method"], e["keep_rate"], cfg).key + ".rep0"]
        for r in recs:
            if "error" not in r:
                assert r["gmacs"] == pytest.approx(
                    tca.macs_for(geom, cfg, anchors=r.get("anchors", False)).gmacs, rel=1e-12
                )
        assert e["gmacs_baseline"] == pytest.approx(base)
        if e["method"] != "tca":
            assert e["gmacs"] == pytest.approx(e["gmacs_analytic"], rel=1e-12)
        else:
            assert e["gmacs_analytic"] <= e["gmacs"] <= e["gmacs_analytic_with_anchor"]
        if e["method"] != "none":
            assert e["gmacs"] < base and e["gmacs_ratio"] > 1.3
        good = [r for r in recs if "error" not in r]
        key = "pred_corrected" if e["method"] == "tca" else "pred"
        assert e["top1"] == pytest.approx(100 * sum(r[key] == r["label"] for r in good) / 9)
        assert e["top5"] == 100.0  # 3 classes: top-3 always contains the label
        assert all(len(r["top"]) == 3 and r["top"][0] == r["pred"] for r in good)
        assert e["images_per_s"] > 0


def test_baselines_are_plain_condensation_without_correction(clip, folder, reference):
    _, records = reference
    ds = ev.load_dataset(folder)
    text = clip.encode_text(ds.labels)
    for key, cfg in (
        ("none", tca.CondenseConfig(method="none")),
        ("evit-R0.7", tca.CondenseConfig(method="evit", keep_rate=0.7)),
        ("tome-R0.7", tca.CondenseConfig(method="tome", keep_rate=0.7)),
    ):
        recs = [r for r in records[key + ".rep0"] if "error" not in r]
        assert not any("pred_corrected" in r or "anchors" in r for r in recs)
        x = torch.stack([clip.preprocess(tca.load_image(folder / r["path"])) for r in recs])
        with torch.inference_mode():
            feats = F.normalize(tca.encode(clip.model, x, cfg).features.float(), dim=-1)
        preds = (feats @ text.T).argmax(-1).tolist()
        assert preds == [r["pred"] for r in recs]  # exactly CLIP's zero-shot argmax: no reservoir


def test_tca_is_a_fresh_stream_per_run(clip, folder, reference):
    """A hand-written stream loop (fresh Reservoir, same order and batches) reproduces the
    records exactly, and a second evaluation gives the same answers (no state leaks)."""
    _, records = reference
    recs = records["tca-R0.7.rep0"]
    ds = ev.load_dataset(folder)
    text = clip.encode_text(ds.labels)
    scale = float(clip.model.logit_scale.detach().exp())
    cfg = tca.CondenseConfig(method="tca", keep_rate=0.7)
    reservoir = tca.Reservoir(len(ds.labels), tca.preset("default"))
    expected = []
    for start in range(0, len(recs), 4):
        batch = [r for r in recs[start : start + 4] if "error" not in r]
        x = torch.stack([clip.preprocess(tca.load_image(folder / r["path"])) for r in batch])
        with torch.inference_mode():
            enc = tca.encode(clip.model, x, cfg, anchors=reservoir.anchors(), record_cls=True)
            feats = F.normalize(enc.features.float(), dim=-1)
            logits = scale * feats @ text.T
        corrected = tca.stream_update(reservoir, enc.cls_tokens, logits, feats)
        expected += [
            (int(a), int(b), enc.anchors_used)
            for a, b in zip(logits.argmax(-1), corrected.argmax(-1))
        ]
    got = [(r["pred"], r["pred_corrected"], r["anchors"]) for r in recs if "error" not in r]
    assert got == expected
    assert got[0][2] is False  # the first image of a run never sees anchors: fresh reservoir
    again = _run(clip, folder, None, methods=("tca",))
    first = next(e for e in reference[0]["results"] if e["method"] == "tca")
    assert again["results"][0]["top1"] == first["top1"]
    assert again["results"][0]["top1_condensation_only"] == first["top1_condensation_only"]


# ------------------------------------------------------------------------------------------
# Resumption


@pytest.mark.parametrize("variant", ["log", "snapshot", "tca-records-lost"])
def test_resume_after_crash(clip, folder, reference, tmp_path, monkeypatch, variant):
    """Crash after 8 of 10 images, resume: done images are not recomputed and the result is
    identical to the uninterrupted run, TCA's reservoir included."""
    if variant == "snapshot":  # fold the reservoir log into a snapshot after every batch
        monkeypatch.setattr(tca.eval.records, "COMPACT_MIN", 1)
        monkeypatch.setattr(tca.eval.records, "COMPACT_FACTOR", 0)
    records = tmp_path / "records"

    def crash(repeat, done):
        if done >= 8:
            raise RuntimeError("simulated crash")

    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(clip, folder, records, on_batch=crash)
    partial = _records(records)
    assert all(len(v) == 8 for v in partial.values())
    if variant == "snapshot":
        assert list(records.glob("tca-*.reservoir.pt"))
    tca_file = next(records.glob("tca-*.jsonl"))
    lines = tca_file.read_text().splitlines()
    if variant == "tca-records-lost":  # the reservoir log got ahead of the JSONL records
        tca_file.write_text("\n".join(lines[:5]) + "\n")
    none_file = next(records.glob("none.*.jsonl"))
    with open(none_file, "a") as f:
        f.write('{"k": 8, "path": "torn li')  # a torn last line from the crash
    result = _run(clip, folder, records)
    final = _records(records)
    ref = reference[1]
    assert set(final) == set(ref)
    for name in ref:
        assert _strip(final[name]) == _strip(ref[name]), name
    for e in result["results"]:
        run = e["per_repeat"][0]
        resumed_upto = 4 if (variant == "tca-records-lost" and e["method"] == "tca") else 8
        recs = final[ev.Setting(e["method"], e["keep_rate"], None).key + ".rep0"]
        readable_left = sum("error" not in r for r in recs[resumed_upto:])
        assert run["computed"] == readable_left  # only the missing images went through the model
        assert run["resumed"] == resumed_upto
    ref_results = {e["setting"]: e for e in reference[0]["results"]}
    for e in result["results"]:
        for key in ("top1", "top5", "gmacs", "top1_condensation_only"):
            assert e.get(key) == ref_results[e["setting"]].get(key)
    # a complete TCA run keeps its reservoir store (so a cut last line resumes from the cut);
    # the order-independent baselines have none
    kept = sorted(f.name.split(".rep")[0] + f.suffix for f in records.glob("*.reservoir.*"))
    assert "tca-R0.7.bin" in kept and {n.split("-")[0] for n in kept} == {"tca"}


def test_repeats(clip, folder, tmp_path):
    result = _run(clip, folder, tmp_path, methods=("none", "tca"), repeats=2, limit=6)
    by = {e["method"]: e for e in result["results"]}
    assert by["none"]["repeats"] == 1 and by["none"]["order_independent"]
    assert by["tca"]["repeats"] == 2 and len(by["tca"]["per_repeat"]) == 2
    assert "top1_std" in by["tca"] and by["none"]["top1_std"] == 0.0
    recs = _records(tmp_path)
    assert set(recs) == {"none.rep0", "tca-R0.7.rep0", "tca-R0.7.rep1"}
    p0 = [r["path"] for r in recs["tca-R0.7.rep0"]]
    p1 = [r["path"] for r in recs["tca-R0.7.rep1"]]
    assert sorted(p0) == sorted(p1) and p0 != p1 and len(p0) == 6
    assert [r["path"] for r in recs["none.rep0"]] == p0
    assert result["dataset"]["evaluated"] == 6
    assert "± " in ev.format_table(result)
    only = _run(clip, folder, None, methods=("none",), repeats=3)  # nothing order-dependent
    assert only["results"][0]["repeats"] == 1 and only["options"]["repeats"] == 3


# ------------------------------------------------------------------------------------------
# Files and the command line


def _cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli_main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_files_and_resume(folder, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [
        "eval",
        str(folder),
        "--model",
        TINY,
        "--pretrained",
        "none",
        "--methods",
        "none,tca",
        "--keep-rate",
        "0.9",
        "0.7",
        "--batch-size",
        "4",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(out / "r.json"),
        "--csv",
        str(out / "r.csv"),
        "--plot",
        str(out / "r.png"),
    ]
    rc, stdout, stderr = _cli(capsys, *argv)
    assert rc == 0, stderr
    assert "top-1 %" in stdout and "tca R=0.7" in stdout and "none (CLIP)" in stdout
    assert "RANDOM weights" in stdout and "meaningless" in stdout
    assert "skipped unreadable image green_leaf/broken.jpg" in stderr
    data = json.loads((out / "r.json").read_text())
    assert data["random_weights"] is True and "meaningless" in data["note"]
    assert [e["setting"] for e in data["results"]] == ["none (CLIP)", "tca R=0.9", "tca R=0.7"]
    assert "GMACs" in data["convention"]
    rows = list(csv.DictReader(open(out / "r.csv")))
    assert list(rows[0]) == list(ev.CSV_FIELDS) and len(rows) == 3
    assert all(r["random_weights"] == "True" and "RANDOM" in r["model"] for r in rows)
    assert float(rows[2]["gmacs"]) < float(rows[1]["gmacs"]) < float(rows[0]["gmacs"])
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "r.png") as im:
        assert im.size[0] > 300 and im.size[1] > 200
    assert len(list((out / "r.records").glob("*.jsonl"))) == 3  # default records: OUT.records
    rc, stdout2, stderr2 = _cli(capsys, *argv)  # the same command again resumes everything
    assert rc == 0 and "resuming: 30 image result(s)" in stderr2
    again = json.loads((out / "r.json").read_text())
    assert all(p["computed"] == 0 for e in again["results"] for p in e["per_repeat"])
    assert [e["top1"] for e in again["results"]] == [e["top1"] for e in data["results"]]
    rc, _, stderr3 = _cli(capsys, *argv, "--fresh")
    fresh = json.loads((out / "r.json").read_text())
    assert rc == 0 and "resuming" not in stderr3
    assert all(p["computed"] == 9 for e in fresh["results"] for p in e["per_repeat"])


def test_cli_default_records_dir(folder, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _cli(
        capsys,
        "eval",
        str(folder),
        "--model",
        TINY,
        "--pretrained",
        "none",
        "--methods",
        "evit",
        "--keep-rate",
        "0.5",
        "--limit",
        "3",
        "--workers",
        "1",
        "--no-progress",
    )
    assert rc == 0, err
    assert len(list((tmp_path / "results.records").glob("evit-R0.5.*.jsonl"))) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--keep-rate", "1.5"], "keep rate must be in (0, 1]"),
        (["--keep-rate", "abc"], "keep rates must be numbers"),
        (["--methods", "none,foo"], "unknown method 'foo'"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--limit", "0"], "--limit must be >= 1"),
        (["--shuffle-seed", "none", "--repeats", "2"], "needs shuffled orders"),
        (["--layers", "3,40", "--methods", "evit"], "layer index 40 is out of range"),
    ],
)
def test_cli_errors(folder, capsys, extra, message):
    rc, _, err = _cli(
        capsys,
        "eval",
        str(folder),
        "--model",
        TINY,
        "--pretrained",
        "none",
        "--workers",
        "0",
        "--no-progress",
        *extra,
    )
    assert rc == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_cli_bad_data(tmp_path, capsys):
    rc, _, err = _cli(capsys, "eval", str(tmp_path / "nope"), "--pretrained", "none")
    assert (
        rc == 2 and err.strip() == f"error: no such folder or manifest: {str(tmp_path / 'nope')!r}"
    )
    for name in ("Cat", "cat"):
        (tmp_path / "dup" / name).mkdir(parents=True)
        _image(1, "RGB", (16, 16)).save(tmp_path / "dup" / name / "a.png")
    rc, _, err = _cli(
        capsys, "eval", str(tmp_path / "dup"), "--model", TINY, "--pretrained", "none"
    )
    assert rc == 2 and "duplicate label" in err.strip().splitlines()[-1]
    with pytest.raises(SystemExit) as exc:
        cli_main(["eval", str(tmp_path), "--preset", "no-such-preset"])
    assert exc.value.code == 2


# ------------------------------------------------------------------------------------------
# Offline smoke test on real photos (Tux Paint stamps, installed by .ci/run)


@pytest.mark.skipif(
    not STAMPS.is_dir(),
    reason=f"{STAMPS} missing: install the Debian package tuxpaint-stamps-default (.ci/run does)",
)
def test_tuxpaint_smoke(tmp_path, capsys):
    data = tmp_path / "tux"
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make_tuxpaint_folder.py"),
            str(data),
            "--classes",
            "6",
            "--per-class",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    ds = ev.load_dataset(data)
    assert len(ds.labels) == 6 and len(ds) == 24 and ds.ignored_files == 0
    with Image.open(ds.paths[0]) as im:  # composited onto white: RGB, white background
        assert im.mode == "RGB" and (np.asarray(im) == 255).all(axis=-1).any()
    assert ev.load_dataset(data / "manifest.csv").paths == ds.paths
    out = tmp_path / "out"
    rc, stdout, stderr = _cli(
        capsys,
        "eval",
        str(data),
        "--model",
        TINY,
        "--pretrained",
        "none",
        "--workers",
        "1",
        "--no-progress",
        "--out",
        str(out / "tux.json"),
        "--plot",
        str(out / "tux.png"),
        "--csv",
        str(out / "tux.csv"),
    )
    assert rc == 0, stderr
    assert "meaningless" in stdout
    result = json.loads((out / "tux.json").read_text())
    assert result["dataset"]["evaluated"] == 24 and result["dataset"]["unreadable"] == 0
    assert [e["setting"] for e in result["results"]] == [
        "none (CLIP)",
        "tca R=0.9",
        "tca R=0.7",
        "evit R=0.9",
        "evit R=0.7",
        "tome R=0.9",
        "tome R=0.7",
    ]
    by = {e["setting"]: e for e in result["results"]}
    for e in result["results"]:
        assert e["n_images"] == 24 and 0 <= e["top1"] <= 100 and e["top1"] <= e["top5"]
    for m in ("tca", "evit", "tome"):
        assert by[f"{m} R=0.7"]["gmacs"] < by[f"{m} R=0.9"]["gmacs"] < by["none (CLIP)"]["gmacs"]
    assert (out / "tux.png").stat().st_size > 1000
    shutil.rmtree(data)
