"""The app's speed checks (issues 4 and 9), on ViT-B/16 with random weights, CPU, batch 1.

    HF_HUB_OFFLINE=1 python benchmarks/bench_app.py [--repeats 7] [--no-cold-start] [--no-browser]

Measured, interleaved round by round, medians reported:

* bare2: two plain open_clip ``encode_image`` passes (an unpatched copy of the model);
* run: one Run as the app does it: the classify handler (baseline + condensed + trace, text
  embeddings cached) and the display handler (the map, all block maps for the strip, the
  chart with the current block marked, the HTML panels), plus Gradio's own encoding of the
  map, the chart and the 12 strip tiles. The chart depends only on the settings and the block
  and is memoised; "chart" is the cost of drawing it afresh, reported separately;
* sweep: the keep-rate sweep of one method (8 rates, one job) plus drawing its plot, as the
  app runs it after a Run of the image (the Run's baseline reused; R = 1 is the baseline, so 7
  untraced condensed passes), and without a Run (its own baseline pass);
* maps: rendering all layer maps (numpy only);
* rerender: a display-only change (one map with the attention overlay, zoomed, PNG-encoded);
* first screen: a real browser (chromium) loading the page until the first example's map is
  visible, with TCA_FIRST_SCREEN=now (the default: computed before serving, part of the page)
  and =background (computed in a thread at start-up, handed over by the page load event);
* cold start: ``python app.py`` until it answers HTTP, and until its first /classify result.

Targets: run <= 1.2 x bare2, sweep <= 3 x run, first screen <= 3 s, rerender <= 100 ms,
cold start <= 20 s. Timings are not asserted anywhere; the table is for the README.
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
from tca import charts, render  # noqa: E402
from tca.app import export  # noqa: E402

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
    app = app_module.App(MODEL, "none", exports=export.ExportDir(tempfile.mkdtemp(prefix="bench-")))
    app_module.build_demo(MODEL, "none", app=app, first_screen=None)  # names the components
    image_out = gr.Image(type="numpy", format="png")
    gallery_out = gr.Gallery(format="png")

    def bare2():
        with torch.inference_mode():
            bare.model.encode_image(pixels)
            bare.model.encode_image(pixels)

    def classify():
        return app.classify(
            str(IMAGE),
            LABELS,
            MODEL,
            "tca",
            0.7,
            "3,6,9",
            2,
            "mean",
            "single",
            False,
            None,
            progress=_NoProgress(),
        )

    def display(state):
        out = app.show_run(state, 11, "fates", False, 0.5, None, 12, False, None)
        # what Gradio does with the map, the chart, the strip
        image_out.postprocess(out[app.ui["map"]]["value"])
        image_out.postprocess(out[app.ui["chart"]]["value"])
        gallery_out.postprocess(out[app.ui["strip"]]["value"])
        return out

    def sweep(state=None):
        out = app.sweep(
            str(IMAGE),
            LABELS,
            MODEL,
            "tca",
            0.7,
            "3,6,9",
            2,
            "mean",
            "single",
            False,
            state,
            progress=_NoProgress(),
        )
        image_out.postprocess(out[app.ui["sweep_plot"]])

    # warm-up: loads, patches, text embeddings cached, first-call allocations
    bare2()
    t0 = time.perf_counter()
    _, state, _ = classify()
    display(state)
    t_cold_text = (time.perf_counter() - t0) * 1e3
    sweep()
    rows: dict[str, list[float]] = {
        k: []
        for k in (
            "bare2",
            "run",
            "classify",
            "display",
            "maps",
            "rerender",
            "ratio",
            "chart",
            "ratio_chart",
            "sweep",
            "ratio_sweep",
            "sweep_fresh",
            "ratio_sweep_fresh",
        )
    }
    for _ in range(repeats):
        b, _ = _ms(bare2)
        t_cls, (summary, state, _) = _ms(classify)
        # each closure runs at once; the default arguments bind this round's state (ruff B023)
        t_disp, _ = _ms(lambda state=state: display(state))
        t_sw, _ = _ms(lambda state=state: sweep(state))  # as in the app: after a Run of this image
        t_sw_fresh, _ = _ms(sweep)
        m, _ = _ms(lambda state=state: render.all_layer_maps(state.seen, state.trace))

        def rerender(state=state):
            img = app.show_layer(state, 6, "fates", True, 0.5)[app.ui["map"]]["value"]
            image_out.postprocess(img)

        r, _ = _ms(rerender)
        res = state.result
        c, _ = _ms(
            lambda res=res, state=state: image_out.postprocess(
                charts.figure_to_array(
                    charts.tokens_chart(
                        res.baseline_tokens,
                        res.tokens_per_layer,
                        state.trace.condensing_layers,
                        "tca",
                        current=11,
                    )
                )
            )
        )
        rows["chart"].append(c)
        rows["ratio_chart"].append((t_cls + t_disp + c) / b)
        rows["bare2"].append(b)
        rows["classify"].append(t_cls)
        rows["display"].append(t_disp)
        rows["run"].append(t_cls + t_disp)
        rows["maps"].append(m)
        rows["rerender"].append(r)
        rows["ratio"].append((t_cls + t_disp) / b)
        rows["sweep"].append(t_sw)
        rows["ratio_sweep"].append(t_sw / (t_cls + t_disp))
        rows["sweep_fresh"].append(t_sw_fresh)
        rows["ratio_sweep_fresh"].append(t_sw_fresh / (t_cls + t_disp))
    rows["first_run_cold_text"] = [t_cold_text]
    return rows


def first_screen(loads: int = 5, mode: str = "now") -> list[float] | None:
    """Seconds from navigation to the first example's map being visible, in chromium, with
    TCA_FIRST_SCREEN=``mode`` ("now": part of the page; "background": via the load event)."""
    browser = os.environ.get("TCA_BROWSER", "/usr/bin/chromium")
    if not Path(browser).exists():
        return None
    from playwright.sync_api import sync_playwright

    demo = app_module.build_demo(MODEL, "none", first_screen=mode)  # as python app.py
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_options())
    # build_demo hangs its App on the Blocks; the start-up computation is done, now time loads
    demo.tca_app.first_screen()  # type: ignore[attr-defined]
    out = []
    try:
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path=browser, args=["--headless", "--no-sandbox"])
            for _ in range(loads):
                pg = b.new_page(viewport={"width": 1400, "height": 1000})
                t0 = time.perf_counter()
                pg.goto(url)
                pg.locator("#layer-map img").wait_for(state="visible", timeout=60_000)
                pg.wait_for_function(
                    "() => { const i = document.querySelector('#layer-map img');"
                    " return i && i.complete && i.naturalWidth > 0; }"
                )
                out.append(time.perf_counter() - t0)
                pg.close()
            b.close()
    finally:
        demo.close()
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(timeout: float = 180.0, mode: str = "now") -> tuple[float, float]:
    """Seconds from ``python app.py`` to HTTP 200, and to the first /classify result."""
    from gradio_client import Client, handle_file

    port = _free_port()
    env = dict(
        os.environ,
        GRADIO_SERVER_PORT=str(port),
        TCA_MODEL=MODEL,
        HF_HUB_OFFLINE="1",
        TCA_FIRST_SCREEN=mode,
    )
    env.pop("TCA_PRETRAINED", None)  # the default (openai): offline it falls back to random
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "app.py")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
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
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-cold-start", action="store_true")
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args()
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpus {os.cpu_count()}, "
        f"model {MODEL} (random weights), image {IMAGE.name}, labels: {LABELS}"
    )
    rows = measure(args.repeats)
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n{'measure':58s} {'median':>10s}  {'min':>9s}  target")
    table = [
        ("two bare forward passes (ms)", "bare2", ""),
        ("one Run: classify + display (ms)", "run", ""),
        ("  classify handler (2 passes + trace) (ms)", "classify", ""),
        ("  display handler (map, 12-tile strip, chart, panels) (ms)", "display", ""),
        ("Run / two bare passes (per round)", "ratio", "<= 1.2"),
        ("tokens chart drawn afresh (new settings) (ms)", "chart", ""),
        ("Run incl. a fresh chart / two bare passes", "ratio_chart", ""),
        ("keep-rate sweep after a Run, 8 rates, incl. plot (ms)", "sweep", ""),
        ("sweep after a Run / one Run (per round)", "ratio_sweep", "<= 3"),
        ("  the same sweep without a Run (own baseline pass) (ms)", "sweep_fresh", ""),
        ("  sweep without a Run / one Run (per round)", "ratio_sweep_fresh", ""),
        ("render all 12 layer maps (ms)", "maps", ""),
        ("re-render after a display-only change (ms)", "rerender", "<= 100"),
        (
            "first Run of a fresh App (loads the model, encodes text) (ms)",
            "first_run_cold_text",
            "",
        ),
    ]
    for name, key, target in table:
        fmt = "{:10.2f}" if key.startswith("ratio") else "{:10.1f}"
        print(f"{name:58s} {fmt.format(med[key])}  {fmt.format(min(rows[key]))[1:]}  {target}")
    if not args.no_browser:
        for mode in ("now", "background"):
            loads = first_screen(mode=mode)
            if loads is None:
                print("first screen: no chromium found (TCA_BROWSER), skipped")
                break
            print(
                f"{'first screen (' + mode + '): page load -> map visible (s)':58s} "
                f"{statistics.median(loads):10.2f}  {min(loads):9.2f}  <= 3"
            )
    if not args.no_cold_start:
        for mode in ("now", "background"):
            serving, first = cold_start(mode=mode)
            print(
                f"{'cold start (' + mode + '): python app.py -> HTTP 200 (s)':58s} "
                f"{serving:10.1f}  {'':9s}  <= 20"
            )
            print(f"{'  -> first /classify result (s)':58s} {first:10.1f}")
    print(
        f"\n{args.repeats} interleaved rounds; medians. The machine may be shared: compare "
        "within one table, not across runs."
    )


if __name__ == "__main__":
    main()
