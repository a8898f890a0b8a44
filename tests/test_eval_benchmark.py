"""clip_benchmark data sets, the paper's suites and what must not go quietly wrong in
`python -m tca eval`: offline fixtures in clip_benchmark's layouts (folders and WebDataset
shards) made from Tux Paint stamps or generated images, a tiny random-weight ViT.

Nothing here may reach the network: every test runs with outbound sockets refused."""

from __future__ import annotations

import csv
import io
import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tca
import tca.eval as ev
from tca.cli import main as cli_main
from tca.eval.suites import PAPER_TOP1, format_suite_table, suite_rows

ROOT = Path(__file__).resolve().parent.parent
TINY = "tca-tiny-ViT"
STAMPS = Path("/usr/share/tuxpaint/stamps")
EUROSAT = (
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Refuse every connection that is not local (Ray talks to itself over loopback)."""
    real = socket.socket.connect

    def connect(self, address):
        host = address[0] if isinstance(address, tuple) else address
        if self.family == socket.AF_UNIX or host in ("127.0.0.1", "::1", "localhost"):
            return real(self, address)
        raise OSError(f"test tried to reach the network: {address!r}")

    monkeypatch.setattr(socket.socket, "connect", connect)


def _photos(n: int) -> list[Image.Image]:
    """n small RGB photos: Tux Paint stamps composited on white when installed, else noise."""
    files = sorted(STAMPS.rglob("*.png"))[::7][:n] if STAMPS.is_dir() else []
    out = []
    for i in range(n):
        if i < len(files):
            with Image.open(files[i]) as im:
                rgba = im.convert("RGBA")
                rgba.thumbnail((64, 64))
            canvas = Image.new("RGB", rgba.size, "white")
            canvas.paste(rgba, mask=rgba.getchannel("A"))
            out.append(canvas)
        else:
            rng = np.random.default_rng(i)
            out.append(Image.fromarray(rng.integers(0, 256, (48, 56, 3), dtype=np.uint8)))
    return out


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def make_wds(root: Path, classes: list[str], per_class: int, shards: int = 2) -> list[int]:
    """clip_benchmark's WebDataset layout (what clip_benchmark_export_wds writes); returns the
    labels in shard order."""
    import webdataset as wds

    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classes) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text(
        "a photo of a {c}.\na drawing of the {c}.\n"
    )
    photos = _photos(len(classes) * per_class)
    labels = [i % len(classes) for i in range(len(photos))]
    per_shard = -(-len(photos) // shards)
    for s in range(shards):
        with wds.TarWriter(str(root / "test" / f"{s}.tar")) as sink:
            for i in range(s * per_shard, min(len(photos), (s + 1) * per_shard)):
                sink.write(
                    {
                        "__key__": f"s{i:04d}",
                        "jpg": _jpeg(photos[i]),
                        "cls": str(labels[i]).encode(),
                    }
                )
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    return labels


def make_folders(root: Path, folders: list[str], per_class: int, ext: str = "jpg") -> None:
    photos = iter(_photos(len(folders) * per_class))
    for f in folders:
        (root / f).mkdir(parents=True)
        for j in range(per_class):
            next(photos).save(root / f / f"{j}.{ext}", "JPEG")


@pytest.fixture(scope="module")
def clip():
    return tca.load_model(TINY, pretrained="none", seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """DATA/<clip_benchmark name>: eurosat (torchvision's folders), imagenet-r (WordNet-id
    folders, 3 of its 200 classes), imagenetv2, and ucf101 as WebDataset shards."""
    root = tmp_path_factory.mktemp("benchmarks")
    make_folders(root / "eurosat" / "eurosat" / "2750", list(EUROSAT), 1)
    make_folders(root / "imagenet-r", ["n01443537", "n01484850", "n12267677"], 2)
    make_folders(root / "imagenetv2" / "ImageNetV2-matched-frequency", ["0", "999"], 1, "jpeg")
    make_wds(root / "ucf101", ["Apply Eye Makeup", "Biking", "Diving"], 3)
    return root


# ------------------------------------------------------------------------------------------
# clip_benchmark data sets


def test_webdataset_shards_read_as_clip_benchmark_reads_them(tmp_path):
    from clip_benchmark.datasets.builder import build_dataset

    root = tmp_path / "tux"
    labels = make_wds(root, ["cat", "dog", "fish"], 3, shards=2)
    ds = ev.load_benchmark("wds/tux", root)
    assert ds.labels == ["cat", "dog", "fish"] and ds.kind == "webdataset"
    assert ds.templates == ("a photo of a {}.", "a drawing of the {}.")
    assert ds.targets == labels and len(ds) == 9
    assert [ds.rel(i) for i in (0, 5, 8)] == [
        "test/0.tar/s0000.jpg",
        "test/1.tar/s0005.jpg",
        "test/1.tar/s0008.jpg",
    ]
    theirs = build_dataset("wds/tux", root=str(root), transform=None, split="test")
    assert theirs.classes == ds.labels
    samples = list(theirs)
    assert [int(y) for _, y in samples] == ds.targets
    for i, (image, _) in enumerate(samples):  # the same pixels, read by offset from the shard
        ours = Image.open(io.BytesIO(ds.paths[i].read())).convert("RGB")
        assert np.array_equal(np.asarray(ours), np.asarray(image.convert("RGB")))


def test_wordnet_folders_are_labelled_by_id_within_the_200_classes(data):
    ds = ev.load_benchmark("imagenet-r", data / "imagenet-r")
    assert len(ds.labels) == 200 and ds.labels[0] == "goldfish" and ds.labels[-1] == "acorn"
    assert ds.targets == [0, 0, 1, 1, 199, 199]  # not folder positions 0, 1, 2
    assert [ds.labels[t] for t in ds.targets[::2]] == ["goldfish", "great white shark", "acorn"]
    assert len(ds.templates) == 80 and ds.templates[0] == "a bad photo of a {}."


def test_torchvision_layouts_with_clip_benchmark_names_and_templates(data, tmp_path):
    ds = ev.load_benchmark("eurosat", data / "eurosat")
    assert ds.labels[:3] == ["annual crop land", "forest", "brushland or shrubland"]
    assert ds.targets == list(range(10)) and ds.paths[9].parent.name == "SeaLake"
    assert ds.templates == (
        "a centered satellite photo of {}.",
        "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    )
    v2 = ev.load_benchmark("imagenetv2", data / "imagenetv2")
    assert len(v2.labels) == 1000 and v2.targets == [0, 999]
    partial = tmp_path / "eurosat"
    make_folders(partial / "eurosat" / "2750", ["Forest", "River"], 1)
    with pytest.raises(
        ev.EvalError,
        match="2 class folders, but clip_benchmark names 10 "
        "classes; every class folder must be there",
    ):
        ev.load_benchmark("eurosat", partial)
    with pytest.raises(ev.EvalError, match=r"no such folder .*\(tca never downloads"):
        ev.load_benchmark("cars", tmp_path / "nowhere")
    with pytest.raises(ev.EvalError, match="Unsupported dataset: nonsense"):
        ev.load_benchmark("nonsense", tmp_path)


def test_clip_benchmark_templates_are_selectable(clip, data, tmp_path):
    ds = ev.load_benchmark("wds/ucf101", data / "ucf101")
    ours = ev.evaluate(
        clip,
        ds,
        ("none",),
        (),
        templates="clip_benchmark",
        num_workers=0,
        progress=False,
        echo=lambda s: None,
    )
    paper = ev.evaluate(
        clip, ds, ("none",), (), preset="ucf101", num_workers=0, progress=False, echo=lambda s: None
    )
    assert ours["options"]["templates"] == "clip_benchmark"
    assert paper["options"]["templates"] == "ucf101"
    with pytest.raises(ev.EvalError, match="defines no prompt templates of its own"):
        ev.evaluate(
            clip,
            ev.load_dataset(data / "imagenet-r"),
            ("none",),
            (),
            templates="clip_benchmark",
            progress=False,
            echo=lambda s: None,
        )


def test_imports_reach_no_network():
    """clip_benchmark, webdataset and ray import (and a data set loads) with sockets refused."""
    code = (
        "import socket\n"
        "def refuse(*a, **k): raise OSError('network')\n"
        "socket.socket.connect = refuse; socket.create_connection = refuse\n"
        "socket.getaddrinfo = refuse\n"
        "import clip_benchmark.datasets.builder, webdataset, ray, tca.eval.grid\n"
        "print('ok')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "RAY_USAGE_STATS_ENABLED": "0"},
    )
    assert proc.stdout.strip() == "ok", proc.stderr


# ------------------------------------------------------------------------------------------
# Suites


def _cli(capsys, *argv):
    rc = cli_main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_suite_table_with_the_papers_numbers(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TCA_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))
    out = tmp_path / "out"
    rc, stdout, stderr = _cli(
        capsys,
        "eval",
        str(data),
        "--suite",
        "cross-dataset",
        "--datasets",
        "eurosat,ucf101",
        "--model",
        TINY,
        "--pretrained",
        "none",
        "--methods",
        "none,tca",
        "--keep-rate",
        "0.7",
        "--batch-size",
        "2",
        "--workers",
        "0",
        "--no-progress",
        "--out",
        str(out / "s.json"),
        "--csv",
        str(out / "s.csv"),
        "--plot",
        str(out / "s.png"),
        "--table",
        str(out / "s.md"),
        "--records",
        str(tmp_path / "rec"),
    )
    assert rc == 0, stderr
    suite = json.loads((out / "s.json").read_text())
    assert list(suite["datasets"]) == ["eurosat", "ucf101"]
    euro, ucf = suite["datasets"]["eurosat"], suite["datasets"]["ucf101"]
    assert euro["options"]["preset"] == "eurosat" and euro["options"]["templates"] == "eurosat"
    assert ucf["options"]["preset"] == "ucf101" and ucf["dataset"]["kind"] == "webdataset"
    assert euro["dataset"]["labels"][0] == "annual crop land"
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["eurosat", "ucf101"]
    rows = suite_rows(suite)
    assert [(r["dataset"], r["setting_key"]) for r in rows] == [
        ("eurosat", "none"),
        ("eurosat", "tca-R0.7"),
        ("ucf101", "none"),
        ("ucf101", "tca-R0.7"),
        ("average", "none"),
        ("average", "tca-R0.7"),
    ]
    by = {(r["dataset"], r["setting_key"]): r for r in rows}
    tca_euro = next(e for e in euro["results"] if e["method"] == "tca")
    assert by["eurosat", "tca-R0.7"]["paper_top1"] == 61.63
    assert by["eurosat", "tca-R0.7"]["diff"] == tca_euro["top1"] - 61.63
    assert by["eurosat", "tca-R0.7"]["correction"] == (
        tca_euro["top1"] - tca_euro["top1_condensation_only"]
    )
    assert by["eurosat", "none"]["correction"] is None
    assert by["average", "none"]["paper_top1"] == (50.42 + 65.16) / 2
    assert by["average", "tca-R0.7"]["paper_gflops"] == 11.69
    table = (out / "s.md").read_text()
    assert table == format_suite_table(suite) + "\n" and table in stdout + "\n"
    line = next(l for l in table.splitlines() if l.startswith("| eurosat | tca R=0.7 |"))
    r = by["eurosat", "tca-R0.7"]
    assert line == (
        f"| eurosat | tca R=0.7 | {r['top1']:.2f} | {r['top5']:.2f} | "
        f"{r['gmacs']:.2f} | {r['correction']:+.2f} | 61.63 | {r['diff']:+.2f} | 10 |"
    )
    assert "| average | tca R=0.7 |" in table and "@ 11.69 |" in table
    assert "RANDOM WEIGHTS" in table and "about 65.81" in table
    with open(out / "s.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [(c["dataset"], c["setting_key"], c["paper_top1"]) for c in csv_rows] == [
        ("eurosat", "none", "50.42"),
        ("eurosat", "tca-R0.7", "61.63"),
        ("ucf101", "none", "65.16"),
        ("ucf101", "tca-R0.7", "67.38"),
        ("average", "none", str((50.42 + 65.16) / 2)),
        ("average", "tca-R0.7", str((61.63 + 67.38) / 2)),
    ]
    with Image.open(out / "s.png") as im:
        assert im.size[0] > 600
    assert set(PAPER_TOP1["tca-R0.9"]) == {
        "aircraft",
        "caltech101",
        "cars",
        "dtd",
        "eurosat",
        "flowers",
        "food101",
        "pets",
        "sun397",
        "ucf101",
    }


def test_suite_data_sets_from_their_layouts_or_a_manifest(data, tmp_path):
    from tca.eval.suites import CROSS_DATASET, dataset_root, load_suite_dataset

    by = {e.key: e for e in CROSS_DATASET}
    assert dataset_root(str(data), by["eurosat"]) == data / "eurosat"
    assert dataset_root("/d/{dataset}/x", by["flowers"]) == Path("/d/flowers/x")
    assert load_suite_dataset(by["ucf101"], data / "ucf101").kind == "webdataset"
    assert load_suite_dataset(by["eurosat"], data / "eurosat").kind == "clip_benchmark"
    split = tmp_path / "eurosat_test.csv"  # e.g. the paper's own (CoOp) test split
    split.write_text(f"path,label\n{data}/eurosat/eurosat/2750/River/0.jpg,River\n")
    ds = load_suite_dataset(by["eurosat"], split)
    assert (ds.kind, ds.labels, len(ds)) == ("csv", ["River"], 1)


def test_cli_reads_a_clip_benchmark_data_set_by_name(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TCA_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))
    rc, stdout, stderr = _cli(
        capsys,
        "eval",
        str(data / "ucf101"),
        "--dataset",
        "wds/ucf101",
        "--methods",
        "none",
        "--templates",
        "clip_benchmark",
        "--model",
        TINY,
        "--pretrained",
        "none",
        "--workers",
        "0",
        "--no-progress",
        "--records",
        str(tmp_path / "rec"),
        "--out",
        str(tmp_path / "r.json"),
    )
    assert rc == 0, stderr
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["dataset"]["source"] == f"wds/ucf101 ({data / 'ucf101'})"
    assert result["dataset"]["labels"] == ["Apply Eye Makeup", "Biking", "Diving"]
    assert result["options"]["templates"] == "clip_benchmark"
    assert f"9 images, 3 classes (wds/ucf101 ({data / 'ucf101'}))" in stdout


def test_suite_errors(data, tmp_path, capsys):
    rc, _, err = _cli(
        capsys,
        "eval",
        str(data),
        "--suite",
        "cross-dataset",
        "--datasets",
        "eurosat,mnist",
        "--model",
        TINY,
        "--pretrained",
        "none",
    )
    assert rc == 2 and err.strip().splitlines() == [
        "error: --datasets: mnist not in suite cross-dataset (aircraft, caltech101, cars, dtd, "
        "eurosat, flowers, food101, pets, sun397, ucf101)"
    ]
    rc, _, err = _cli(
        capsys,
        "eval",
        str(data),
        "--suite",
        "cross-dataset",
        "--datasets",
        "dtd",
        "--model",
        TINY,
        "--pretrained",
        "none",
    )
    assert rc == 2 and err.strip().splitlines() == [
        f"error: clip_benchmark data set 'dtd': no such folder {str(data / 'dtd')!r}; download "
        f"it there first (tca never downloads: see docs/evaluation.md)"
    ]


# ------------------------------------------------------------------------------------------
# Nothing quietly wrong


def test_folder_links_back_into_the_tree_are_reported_and_skipped(clip, tmp_path):
    root = tmp_path / "data"
    make_folders(root, ["apple", "boat", "cloud"], 2)
    (root / "rootloop").symlink_to(".")  # an extra "class" holding every image again
    (root / "boat" / "up").symlink_to("..")
    outside = tmp_path / "elsewhere"
    make_folders(outside, ["more"], 1)
    (root / "cloud" / "extra").symlink_to(outside / "more")  # outside the tree: followed
    ds = ev.load_dataset(root)
    assert ds.labels == ["apple", "boat", "cloud"] and len(ds) == 7
    assert ds.skipped_links == ["rootloop", "boat/up"]
    assert ds.rel(6) == "cloud/extra/0.jpg"
    said: list[str] = []
    result = ev.evaluate(clip, ds, ("none",), (), num_workers=0, progress=False, echo=said.append)
    note = (
        "skipped 2 folder link(s) leading back into the data folder (their images would "
        "count twice): rootloop, boat/up"
    )
    assert said == [f"warning: {note}"]
    assert result["dataset"]["skipped_links"] == ["rootloop", "boat/up"]
    assert note in ev.format_table(result)


def test_a_file_linking_to_itself_is_a_link_loop(clip, tmp_path, capsys):
    root = tmp_path / "data"
    make_folders(root, ["apple", "boat"], 2)
    (root / "boat" / "self.jpg").symlink_to("self.jpg")
    (root / "apple" / "gone.jpg").symlink_to(tmp_path / "deleted.jpg")
    ds = ev.load_dataset(root)
    assert (ds.looping_links, ds.dangling_links, len(ds)) == (1, 1, 6)
    result = ev.evaluate(
        clip, ds, ("none",), (), num_workers=0, progress=False, echo=lambda s: None
    )
    err = capsys.readouterr().err
    assert (
        "skipped unreadable image boat/self.jpg: self.jpg is a symbolic link loop (it "
        "leads back to itself)"
    ) in err
    assert (
        "skipped unreadable image apple/gone.jpg: gone.jpg is a symbolic link to a missing "
        "file" in err
    )
    table = ev.format_table(result)
    assert "1 of them: symbolic link(s) to missing files" in table
    assert "1 of them: symbolic link loop(s)" in table


def test_records_at_an_existing_file_is_one_error_line(data, tmp_path, capsys):
    target = tmp_path / "r.jsonl"
    target.write_text("not a folder")
    for records in (target, target / "sub"):
        rc, _, err = _cli(
            capsys,
            "eval",
            str(data / "imagenet-r"),
            "--records",
            str(records),
            "--model",
            "no-such-model-is-loaded-first",
            "--pretrained",
            "none",
        )
        what = "is a file" if records == target else f"lies under {str(target)!r}, which is a file"
        assert rc == 2 and err.strip().splitlines() == [
            f"error: --records {str(records)!r} {what}: records go in a folder (one JSONL file "
            f"per run); give a folder path"
        ]


def test_a_finished_tca_run_with_its_last_line_cut_resumes_from_the_cut(clip, data, tmp_path):
    ds = ev.load_dataset(data / "imagenet-r")
    kw = dict(
        methods=("tca",),
        keep_rates=(0.7,),
        batch_size=2,
        num_workers=0,
        progress=False,
        records_dir=tmp_path / "rec",
        echo=lambda s: None,
    )
    first = ev.evaluate(clip, ds, **kw)
    (log,) = (tmp_path / "rec").glob("*.jsonl")
    full = log.read_text()
    lines = full.splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][: len(lines[-1]) // 2])
    again = ev.evaluate(clip, ds, **kw)
    (run,) = again["results"][0]["per_repeat"]
    assert (run["resumed"], run["computed"]) == (5, 1)  # only the cut image was recomputed
    strip = [{k: v for k, v in json.loads(l).items() if k != "ms"} for l in lines]
    assert [
        {k: v for k, v in json.loads(l).items() if k != "ms"} for l in log.read_text().splitlines()
    ] == strip
    for key in ("top1", "top5", "top1_condensation_only", "gmacs"):
        assert again["results"][0][key] == first["results"][0][key]
