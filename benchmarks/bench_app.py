"""The app's speed checks (issue 4), on ViT-B/16 with random weights, CPU, batch 1.

    HF_HUB_OFFLINE=1 python benchmarks/bench_app.py [--repeats 7] [--no-cold-start]

Measured, interleaved round by round, medians reported:

* bare2: two plain open_clip ``encode_image`` passes (an unpatched copy of the model);
* run: one Run as the app does it: the classify handler (baseline + condensed + trace, text
  embeddings cached) and the display handler (all layer maps, the strip PNG, the JSON export,
  the tokens chart), plus Gradio's own encoding of the chart and of the map. The chart only
  depends on the settings and is memoised, so a new image with the same settings reuses it;
  "chart" is the cost of drawing it afresh (after a settings change), reported separately;
* maps: rendering all layer maps (numpy only);
* rerender: a display-only change (one map with the attention overlay, zoomed, PNG-encoded);
* cold start: ``python app.py`` until it answers HTTP, and until its first /classify result.

Targets: run <= 1.3 x bare2, maps <= 150 ms, rerender <= 100 ms, cold start <= 20 s.
Timings are not asserted anywhere; the table is for the README.
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gradio as gr  # noqa: E402
import torch  # noqa: E402

import app as app_module  # noqa: E402
import tca  # noqa: E402
from tca import explore, render  # noqa: E402

MODEL = "ViT-B-16-quickgelu"
IMAGE = ROOT / "assets" / "chelsea.jpg"
LABELS = "cat, dog, tiger, fox, rabbit"


class _NoProgress:
    def __call__(self, *a, **k):
        pass


def _ms(fn):
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1e3, out


def measure(repeats: int) -> dict[str, list[float]]:
    torch.manual_seed(0)
    bare = tca.load_model(MODEL, pretrained="none", seed=0)  # never patched
    pixels = tca.prepare_image(bare, IMAGE)
    app = app_module.App(MODEL, "none", exports=explore.ExportDir(tempfile.mkdtemp(prefix="bench-")))
    image_out = gr.Image(type="numpy", format="png")

    def bare2():
        with torch.inference_mode():
            bare.model.encode_image(pixels)
            bare.model.encode_image(pixels)

    def one_run():
        summary, state, _ = app.classify(str(IMAGE), LABELS, MODEL, "tca", 0.7, "3,6,9", 2,
                                         "mean", "single", False, None, progress=_NoProgress())
        out = app.show_run(state, 11, False, 0.5, False, None)
        image_out.postprocess(out[7])  # what Gradio does with the chart
        image_out.postprocess(out[4])
        return state

    # warm-up: loads, patches, text embeddings cached, first-call allocations
    bare2()
    t_cold_text, state = _ms(one_run)
    rows: dict[str, list[float]] = {k: [] for k in ("bare2", "run", "classify", "display", "maps",
                                                    "rerender", "ratio", "chart", "ratio_chart")}
    for _ in range(repeats):
        b, _ = _ms(bare2)
        t_cls, (summary, state, _) = _ms(lambda: app.classify(
            str(IMAGE), LABELS, MODEL, "tca", 0.7, "3,6,9", 2, "mean", "single", False, None,
            progress=_NoProgress()))

        def display():
            out = app.show_run(state, 11, False, 0.5, False, None)
            image_out.postprocess(out[7])
            image_out.postprocess(out[4])
        t_disp, _ = _ms(display)
        m, _ = _ms(lambda: render.all_layer_maps(state.view, state.trace))

        def rerender():
            img, _ = app.show_layer(state, 6, True, 0.5)
            image_out.postprocess(img)
        r, _ = _ms(rerender)
        res = state.result
        c, _ = _ms(lambda: image_out.postprocess(render.figure_to_array(render.tokens_chart(
            res.baseline_tokens, res.tokens_per_layer, state.trace.condensing_layers, "tca"))))
        rows["chart"].append(c)
        rows["ratio_chart"].append((t_cls + t_disp + c) / b)
        rows["bare2"].append(b)
        rows["classify"].append(t_cls)
        rows["display"].append(t_disp)
        rows["run"].append(t_cls + t_disp)
        rows["maps"].append(m)
        rows["rerender"].append(r)
        rows["ratio"].append((t_cls + t_disp) / b)
    rows["first_run_cold_text"] = [t_cold_text]
    return rows


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(timeout: float = 120.0) -> tuple[float, float]:
    """Seconds from ``python app.py`` to HTTP 200, and to the first /classify result."""
    from gradio_client import Client, handle_file

    port = _free_port()
    env = dict(os.environ, GRADIO_SERVER_PORT=str(port), TCA_MODEL=MODEL, HF_HUB_OFFLINE="1")
    env.pop("TCA_PRETRAINED", None)  # the default (openai): offline it falls back to random
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/"
    try:
        serving = None
        while time.perf_counter() - t0 < timeout:
            try:
                with urllib.request.urlopen(url, timeout=1) as resp:
                    if resp.status == 200:
                        serving = time.perf_counter() - t0
                        break
            except OSError:
                time.sleep(0.1)
        if serving is None:
            raise RuntimeError("the app did not start")
        Client(url, verbose=False).predict(handle_file(str(IMAGE)), LABELS, api_name="/classify")
        return serving, time.perf_counter() - t0
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-cold-start", action="store_true")
    args = ap.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
          f"model {MODEL} (random weights), image {IMAGE.name}, labels: {LABELS}")
    rows = measure(args.repeats)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n{'measure':50s} {'median':>10s}  {'min':>9s}  target")
    table = [
        ("two bare forward passes (ms)", "bare2", ""),
        ("one Run: classify + display (ms)", "run", ""),
        ("  classify handler (2 passes + trace) (ms)", "classify", ""),
        ("  display handler (maps, strip, JSON, chart) (ms)", "display", ""),
        ("Run / two bare passes (per round)", "ratio", "<= 1.3"),
        ("tokens chart drawn afresh (new settings) (ms)", "chart", ""),
        ("Run incl. a fresh chart / two bare passes", "ratio_chart", "<= 1.3"),
        ("render all 12 layer maps (ms)", "maps", "<= 150"),
        ("re-render after a display-only change (ms)", "rerender", "<= 100"),
        ("first Run of a fresh App (loads the model, encodes text) (ms)", "first_run_cold_text", ""),
    ]
    for name, key, target in table:
        fmt = "{:10.2f}" if key.startswith("ratio") else "{:10.1f}"
        print(f"{name:50s} {fmt.format(med[key])}  {fmt.format(min(rows[key]))[1:]}  {target}")
    if not args.no_cold_start:
        serving, first = cold_start()
        print(f"{'cold start: python app.py -> HTTP 200 (s)':50s} {serving:10.1f}  {'':9s}  <= 20")
        print(f"{'cold start -> first /classify result (s)':50s} {first:10.1f}")
    print(f"\n{args.repeats} interleaved rounds; medians. The machine may be shared: compare "
          "within one table, not across runs.")


if __name__ == "__main__":
    main()
