"""Does a heavy request hold up another visitor (issue 8)? The real app on loopback (ViT-B/32,
random weights, CPU), two gradio_client visitors:

    HF_HUB_OFFLINE=1 python benchmarks/bench_queue.py [--rounds 3] [--runs 4] [--slots 2]

* solo: visitor B's ordinary Run (an image, "cat, dog", one prompt; labels already cached);
* loaded: the same Run while visitor A's Run with 15 new labels x 80 ImageNet prompts (1,200
  prompts, the most one request may ask for) is in flight.

Rounds interleave solo and loaded runs; medians reported, with the ratio loaded / solo and the
heavy request's own duration. Target: loaded <= 8 x solo. ``--slots 1`` measures the old
set-up (one model request at a time) for comparison.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from open_clip import zero_shot_metadata  # noqa: E402

import app as app_module  # noqa: E402

MODEL = "ViT-B-32-quickgelu"
IMAGE = ROOT / "assets" / "chelsea.jpg"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--runs", type=int, default=4, help="B's runs per round, solo and loaded")
    p.add_argument(
        "--slots",
        type=int,
        default=app_module.MODEL_SLOTS,
        help="model requests at once (the app's MODEL_SLOTS)",
    )
    p.add_argument("--labels", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    app_module.MODEL_SLOTS = args.slots
    demo = app_module.build_demo(MODEL, "none")
    _, url, _ = demo.launch(prevent_thread_lock=True, quiet=True, **app_module.launch_options())
    names = list(zero_shot_metadata.IMAGENET_CLASSNAMES)
    try:
        a, b = Client(url, verbose=False), Client(url, verbose=False)
        image = handle_file(str(IMAGE))

        def ordinary() -> float:
            t0 = time.perf_counter()
            b.predict(image, "cat, dog", api_name="/classify")
            return time.perf_counter() - t0

        for _ in range(2):
            ordinary()  # warm-up: model loaded, labels cached
        solo, loaded, heavy = [], [], []
        for r in range(args.rounds):
            solo += [ordinary() for _ in range(args.runs)]
            labels = ", ".join(names[(r + 1) * 50 : (r + 1) * 50 + args.labels])  # new each round
            t0 = time.perf_counter()
            job = a.submit(image, labels, templates="imagenet80", api_name="/classify")
            time.sleep(0.5)  # A is past its checks and encoding prompts
            for _ in range(args.runs):
                if job.done():
                    break
                loaded.append(ordinary())
            job.result()
            heavy.append(time.perf_counter() - t0)
        if os.environ.get("BENCH_VERBOSE"):
            print("solo", [round(x, 2) for x in solo], "loaded", [round(x, 2) for x in loaded])
        s, l = statistics.median(solo), statistics.median(loaded)
        print(
            f"{MODEL}, random weights, model slots {args.slots}, {args.rounds} rounds, "
            f"{len(solo)} solo / {len(loaded)} loaded runs"
        )
        print(f"visitor B's Run, solo:                       {s * 1e3:7.0f} ms (median)")
        print(
            f"visitor B's Run, A's {args.labels} x 80 prompts in flight: {l * 1e3:7.0f} ms "
            f"(median; max {max(loaded) * 1e3:.0f})"
        )
        print(f"ratio loaded / solo: {l / s:.1f}x   (target <= 8x)")
        print(f"A's heavy Run: {statistics.median(heavy):.1f} s (median)")
    finally:
        demo.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
