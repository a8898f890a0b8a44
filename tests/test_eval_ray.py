"""The evaluation grid on a local Ray (2 CPUs): equal to the sequential run cell for cell, and
resumed from the records after a worker is killed mid-cell. Tiny random-weight ViT, offline."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

import tca
import tca.eval as ev
from tca.eval.grid import DataSpec, Job, ModelSpec, RaySpec, cells, run_on_ray, run_sequential

from .test_eval_benchmark import make_folders

ray = pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parent.parent
TINY = "tca-tiny-ViT"
TIMING = ("images_per_s", "images_per_s_std", "model_s")
PER_RUN = ("computed", "resumed", "images_per_s", "model_s")


@pytest.fixture(scope="module")
def local_ray():
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers inherit this environment
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grid") / "data"
    make_folders(root, ["apple", "boat", "cloud"], 12)
    return root


@pytest.fixture(scope="module")
def clip():
    return tca.load_model(TINY, pretrained="none", seed=0)


MODEL = ModelSpec(TINY, None, config_dir=str(ROOT / "tests" / "model_configs"))


def _job(folder: Path, records: Path) -> Job:
    options = ev.EvalOptions(methods=("none", "tca"), keep_rates=(0.7,), batch_size=1)
    return Job("data", DataSpec(str(folder)), options, str(records))


def _comparable(result: dict) -> list[dict]:
    out = []
    for e in result["results"]:
        e = {k: v for k, v in e.items() if k not in TIMING}
        e["per_repeat"] = [
            {k: v for k, v in p.items() if k not in PER_RUN} for p in e["per_repeat"]
        ]
        out.append(e)
    return out


def _lines(records: Path) -> dict[str, list[dict]]:
    return {
        f.name: [
            {k: v for k, v in json.loads(l).items() if k != "ms"}
            for l in f.read_text().splitlines()
        ]
        for f in sorted(records.glob("*.jsonl"))
    }


@pytest.fixture(scope="module")
def sequential(clip, folder, tmp_path_factory):
    records = tmp_path_factory.mktemp("sequential") / "records"
    job = _job(folder, records)
    result = ev.run(
        clip,
        job.data.load(),
        job.options,
        num_workers=0,
        records_dir=records,
        progress=False,
        echo=lambda s: None,
    )
    return result, _lines(records)


def test_two_cells_on_ray_equal_the_sequential_run_and_resume_a_killed_worker(
    local_ray, clip, folder, sequential, tmp_path
):
    """Two workers, one cell each; worker 1 is killed (SIGKILL) after its TCA cell has written
    three images: Ray restarts it, the cell resumes from its records, and every cell equals the
    sequential run (one model, all settings in one stream)."""
    records = tmp_path / "records"
    job = _job(folder, records)
    assert [c.name for c in cells([job])] == ["none rep0", "tca-R0.7 rep0"]
    killed: list[int] = []

    def kill_the_tca_worker(workers):
        pids = ray.get([w.pid.remote() for w in workers])  # models loaded, no cell started

        def watch():
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                for f in records.glob("tca-*.jsonl"):
                    if len(f.read_text().splitlines()) > 3:  # header + 3 images done
                        os.kill(pids[1], signal.SIGKILL)  # cell 1 (tca) went to worker 1
                        killed.append(pids[1])
                        return
                time.sleep(0.002)

        threading.Thread(target=watch, daemon=True).start()

    said: list[str] = []
    (result,) = run_on_ray(
        MODEL,
        [job],
        [job.data.load()],
        RaySpec(workers=2),
        said.append,
        on_workers=kill_the_tca_worker,
    )
    assert said[0] == "ray: 2 cell(s) on 2 worker(s)" and len(killed) == 1
    assert _comparable(result) == _comparable(sequential[0])
    assert _lines(records) == sequential[1]  # the very same record files
    none_run, tca_run = (e["per_repeat"][0] for e in result["results"])
    assert (none_run["resumed"], none_run["computed"]) == (0, 36)  # the cell left alone
    assert tca_run["resumed"] >= 3 and tca_run["computed"] == 36 - tca_run["resumed"] > 0
    (in_turn,) = run_sequential(clip, [job], [job.data.load()], lambda s: None)
    assert _comparable(in_turn) == _comparable(sequential[0])  # finished: nothing recomputed
    assert [p["computed"] for e in in_turn["results"] for p in e["per_repeat"]] == [0, 0]


def test_cli_ray_flag_runs_the_grid_on_the_running_ray(
    local_ray, folder, sequential, tmp_path, capsys, monkeypatch
):
    from tca.cli import main as cli_main

    monkeypatch.setenv("TCA_MODEL_CONFIGS", str(ROOT / "tests" / "model_configs"))
    rc = cli_main(
        [
            "eval",
            str(folder),
            "--model",
            TINY,
            "--pretrained",
            "none",
            "--methods",
            "none,tca",
            "--keep-rate",
            "0.7",
            "--batch-size",
            "1",
            "--ray",
            "--ray-workers",
            "2",
            "--records",
            str(tmp_path / "rec"),
            "--out",
            str(tmp_path / "r.json"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 0, err
    assert "ray: 2 cell(s) on 2 worker(s)" in err
    result = json.loads((tmp_path / "r.json").read_text())
    assert _comparable(result) == _comparable(sequential[0])
