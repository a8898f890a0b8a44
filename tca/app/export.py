"""What a Run of the explorer hands out: the API summary, the whole-run JSON (with the trace
and the merged groups of every block) and a private, self-cleaning folder for the downloads.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Sequence

from PIL import Image

from tca.pipeline import Prediction

from .runs import ExplorerRun


def _top(pred: Prediction, k: int) -> list[dict]:
    return [{"label": l, "prob": p} for l, p in pred.top(k)]


def summary(run: ExplorerRun, top_k: int = 5) -> dict:
    """The API answer of one Run: predictions, tokens per layer, GMACs, timings, settings."""
    r = run.result
    out = r.to_dict(include_trace=False)
    out["weights_note"] = run.weights_note
    out["templates"] = run.templates
    out["top"] = {"baseline": _top(r.baseline, top_k), "condensed": _top(r.condensed, top_k)}
    if r.corrected is not None:
        out["top"]["corrected"] = _top(r.corrected, top_k)
    out["final"] = "corrected" if r.corrected is not None else "condensed"
    return out


def export_dict(run: ExplorerRun) -> dict:
    """Everything about one Run for the JSON download: the summary plus the per-layer trace
    (fates, token of each patch) and the merged groups at every layer."""
    out = summary(run, top_k=len(run.result.labels))
    trace = run.trace
    if trace is not None:
        out["trace"] = trace.to_dict()
        for layer in out["trace"]["layers"]:
            layer["groups"] = [sorted(p) for p in trace.groups(layer["layer"]).values()]
        out["trace"]["patch_order"] = "row-major over grid (rows, cols)"
    out["flops"] = {
        "baseline": run.result.flops_baseline.to_dict(),
        "condensed": run.result.flops_condensed.to_dict(),
    }
    out["image"] = {
        "name": run.image_name,
        "content_key": run.request.image_key,
        "model_view_px": list(run.seen.shape[:2]),
    }
    return out


class ExportDir:
    """A private folder for generated downloads; files older than ``max_age_s`` are removed
    whenever a new one is written, so a long-running server does not fill its disk."""

    def __init__(
        self, root: str | os.PathLike | None = None, max_age_s: float = 3600.0, max_files: int = 200
    ) -> None:
        self.root = (
            Path(root) if root else Path(tempfile.gettempdir()) / f"tca-explorer-{os.getpid()}"
        )
        self.max_age_s = max_age_s
        self.max_files = max_files  # Gradio serves its own copy, so only recent ones are kept

    def path(self, stem: str, suffix: str) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        self.prune()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)[:60]
        return self.root / f"{safe}-{uuid.uuid4().hex[:10]}{suffix}"

    def prune(self) -> None:
        """Remove files older than ``max_age_s`` and all but the newest ``max_files - 1``."""
        cutoff = time.time() - self.max_age_s
        files = []
        for f in self.root.glob("*"):
            try:
                if f.is_file():
                    files.append((f.stat().st_mtime, f))
            except OSError:
                pass
        files.sort(reverse=True)
        for i, (mtime, f) in enumerate(files):
            if mtime < cutoff or i >= self.max_files - 1:
                try:
                    f.unlink()
                except OSError:
                    pass

    def write_json(self, data: dict, stem: str = "tca-run") -> Path:
        p = self.path(stem, ".json")
        p.write_text(json.dumps(data, indent=1))
        return p

    def write_png(self, image: Image.Image, stem: str = "tca-layers") -> Path:
        p = self.path(stem, ".png")
        image.save(p, format="PNG", compress_level=1)
        return p

    def write_gif(
        self, frames: Sequence[Image.Image], stem: str = "tca-depth", ms_per_frame: int = 600
    ) -> Path:
        """An animated GIF (looping) of ``frames``, e.g. the map after every block."""
        p = self.path(stem, ".gif")
        frames[0].save(
            p,
            format="GIF",
            save_all=True,
            append_images=list(frames[1:]),
            duration=ms_per_frame,
            loop=0,
            optimize=False,
        )
        return p


__all__ = ["ExportDir", "export_dict", "summary"]
