"""Reports of an evaluation: per-run metrics, the JSON result, the table, CSV and the plot."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from pathlib import Path
from typing import Protocol

import torch

from ..config import CondenseConfig
from ..flops import CONVENTION, Geometry, macs_for
from .datasets import Dataset
from .records import Run


class DescribesModel(Protocol):
    """What a report needs to know of the model (a ClipModel or tca.eval.loop.ModelFacts)."""

    @property
    def weights_description(self) -> str: ...

    @property
    def is_random(self) -> bool: ...

    @property
    def device(self) -> object: ...


RANDOM_NOTE = (
    "NOTE: this model has RANDOM weights (--pretrained none): the accuracy numbers are "
    "meaningless; only GMACs, speed and the pipeline are real."
)


def summarise_records(records: list[dict], stream: bool = False) -> dict:
    """Metrics of one run from its per-image records (accuracies in %)."""
    good = [r for r in records if "error" not in r]
    n = len(good)
    out: dict = {"n_images": n, "unreadable": len(records) - n}
    if not n:
        return out | {
            "top1": math.nan,
            "top5": math.nan,
            "gmacs": math.nan,
            "images_per_s": math.nan,
        }
    ms = statistics.median(r["ms"] for r in good)  # robust to a cold first batch / load spikes
    pred_key, top_key = ("pred_corrected", "top_corrected") if stream else ("pred", "top")
    out |= {
        "top1": 100.0 * sum(r[pred_key] == r["label"] for r in good) / n,
        "top5": 100.0 * sum(r["label"] in r[top_key] for r in good) / n,
        "gmacs": sum(r["gmacs"] for r in good) / n,
        "images_per_s": 1e3 / ms if ms > 0 else math.inf,
        "model_s": sum(r["ms"] for r in good) / 1e3,
    }
    if stream:
        out["top1_condensation_only"] = 100.0 * sum(r["pred"] == r["label"] for r in good) / n
        out["top5_condensation_only"] = 100.0 * sum(r["label"] in r["top"] for r in good) / n
        out["anchors_fraction"] = sum(bool(r.get("anchors")) for r in good) / n
    return out


_AVERAGED = (
    "top1",
    "top5",
    "top1_condensation_only",
    "top5_condensation_only",
    "gmacs",
    "images_per_s",
    "anchors_fraction",
)


def summarise(
    clip: DescribesModel,
    dataset: Dataset,
    runs: list[Run],
    geom: Geometry,
    options: dict,
    wall: float,
) -> dict:
    """The JSON-ready result of an evaluation: one entry per setting (in the order of the first
    repeat's runs), averaged over its repeats, plus the data set, options and machine."""
    base_gmacs = macs_for(geom, CondenseConfig(method="none")).gmacs
    unreadable = sorted(
        {
            dataset.rel(run.order[rec["k"]])
            for run in runs
            for rec in run.log.records
            if "error" in rec
        }
    )
    results = []
    for s in dict.fromkeys(run.setting for run in runs):
        per = [
            summarise_records(run.log.records, s.stream)
            | {"repeat": run.repeat, "computed": run.computed, "resumed": run.resumed}
            for run in runs
            if run.setting == s
        ]
        entry: dict = {
            "setting": s.name,
            "method": s.method,
            "keep_rate": s.keep_rate,
            "config": s.config.describe(),
            "repeats": len(per),
            "order_independent": not s.stream,
            "n_images": per[0]["n_images"],
            "unreadable": per[0]["unreadable"],
            "gmacs_baseline": base_gmacs,
            "gmacs_analytic": macs_for(geom, s.config).gmacs,
        }
        if s.stream:
            entry["gmacs_analytic_with_anchor"] = macs_for(geom, s.config, anchors=True).gmacs
        for key in _AVERAGED:
            vals = [p[key] for p in per if key in p]
            if vals:
                entry[key] = statistics.fmean(vals)
                entry[key + "_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        entry["gmacs_ratio"] = base_gmacs / entry["gmacs"] if entry.get("gmacs") else math.nan
        entry["per_repeat"] = per
        results.append(entry)
    return {
        "tool": "python -m tca eval",
        "model": clip.weights_description,
        "random_weights": clip.is_random,
        "note": RANDOM_NOTE if clip.is_random else None,
        "convention": CONVENTION,
        "accuracy": "top-1/top-5 in %; for tca, top1 is with the logits correction and "
        "top1_condensation_only is the anchor-guided condensation alone",
        "dataset": {
            "source": dataset.source,
            "kind": dataset.kind,
            "labels": dataset.labels,
            "num_images": len(dataset),
            "evaluated": len(runs[0].order),
            "unreadable": len(unreadable),
            "unreadable_files": unreadable,
            "ignored_non_image_files": dataset.ignored_files,
            "empty_class_folders": list(dataset.empty_classes),
            "dangling_links": dataset.dangling_links,
            "looping_links": dataset.looping_links,
            "skipped_links": list(dataset.skipped_links),
        },
        "options": options,
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "device": str(clip.device),
        },
        "wall_s": wall,
        "results": results,
    }


def _fmt(value, std=None, digits=1, show_std=False) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}f}"
    if show_std and std is not None:
        text += f" ± {std:.{digits}f}"
    return text


def format_table(result: dict) -> str:
    """The human-readable summary printed at the end of ``python -m tca eval``."""
    ds = result["dataset"]
    repeats = result["options"]["repeats"]
    top_k = result["options"]["top_k"]
    lines = [
        f"{result['model']}  |  {ds['evaluated']} images, {len(ds['labels'])} classes "
        f"({ds['source']})  |  batch {result['options']['batch_size']}, "
        f"templates {result['options']['templates']}, preset {result['options']['preset']}"
        + (f", {repeats} stream orders (mean ± std)" if repeats > 1 else "")
    ]
    head = (
        f"{'setting':<14}{'top-1 %':>15}{f'top-{top_k} %':>15}{'top-1 no corr.':>16}"
        f"{'GMACs':>8}{'x fewer':>9}{'img/s':>8}{'n':>6}"
    )
    lines += [head, "-" * len(head)]
    for e in result["results"]:
        std = repeats > 1 and not e["order_independent"]
        lines.append(
            f"{e['setting']:<14}{_fmt(e.get('top1'), e.get('top1_std'), show_std=std):>15}"
            f"{_fmt(e.get('top5'), e.get('top5_std'), show_std=std):>15}"
            f"{_fmt(e.get('top1_condensation_only'), e.get('top1_condensation_only_std'), show_std=std):>16}"
            f"{_fmt(e.get('gmacs'), digits=2):>8}{_fmt(e.get('gmacs_ratio'), digits=2):>9}"
            f"{_fmt(e.get('images_per_s'), digits=2):>8}{e['n_images']:>6}"
        )
    lines.append(f"GMACs: mean per image, {CONVENTION}; 'x fewer' = baseline / setting.")
    lines.append(
        "tca: top-1 is with the logits correction (fresh reservoir per run); 'no corr.' "
        "is the anchor-guided condensation alone. Baselines get no correction."
    )
    if result["options"]["batch_size"] > 1 and any(e["method"] == "tca" for e in result["results"]):
        lines.append(
            f"tca with batch {result['options']['batch_size']}: images are filed and "
            f"corrected one by one, anchors refresh once per batch (--batch-size 1 = "
            f"the released protocol)."
        )
    lines.append(
        "img/s: from the median model time per image (encode + logits + reservoir), "
        "batches of all settings interleaved; decoding overlaps it in DataLoader workers."
    )
    if ds["unreadable"]:
        lines.append(
            f"skipped {ds['unreadable']} unreadable image(s): "
            f"{', '.join(ds['unreadable_files'][:5])}{' ...' if ds['unreadable'] > 5 else ''}"
        )
    if ds.get("dangling_links"):
        lines.append(f"{ds['dangling_links']} of them: symbolic link(s) to missing files")
    if ds.get("looping_links"):
        lines.append(f"{ds['looping_links']} of them: symbolic link loop(s)")
    if ds.get("skipped_links"):
        lines.append(skipped_links_note(ds["skipped_links"]))
    if ds.get("empty_class_folders"):
        lines.append(empty_classes_note(ds["empty_class_folders"]))
    if result["random_weights"]:
        lines.append(RANDOM_NOTE)
    return "\n".join(lines)


def empty_classes_note(names: list[str]) -> str:
    """The line that says which class folders held no images (and so are not labels)."""
    shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
    return (
        f"ignored {len(names)} empty class folder(s) (no images, so not candidate labels): {shown}"
    )


def skipped_links_note(links: list[str]) -> str:
    """The line that names the folder links not followed because they lead back into the tree."""
    shown = ", ".join(links[:5]) + (", ..." if len(links) > 5 else "")
    return (
        f"skipped {len(links)} folder link(s) leading back into the data folder (their images "
        f"would count twice): {shown}"
    )


CSV_FIELDS = (
    "setting",
    "method",
    "keep_rate",
    "top1",
    "top1_std",
    "top5",
    "top5_std",
    "top1_condensation_only",
    "top1_condensation_only_std",
    "gmacs",
    "gmacs_baseline",
    "gmacs_ratio",
    "images_per_s",
    "images_per_s_std",
    "n_images",
    "unreadable",
    "repeats",
    "model",
    "random_weights",
)


def write_csv(result: dict, path: str | os.PathLike) -> None:
    """One row per setting (means over repeats), for spreadsheets and plots."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        w.writeheader()
        for e in result["results"]:
            row = {k: e.get(k, "") for k in CSV_FIELDS}
            row["keep_rate"] = "" if e["keep_rate"] is None else e["keep_rate"]
            row["model"] = result["model"]
            row["random_weights"] = result["random_weights"]
            w.writerow(row)


def write_json(result: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2, default=_json_default), encoding="utf-8")
    os.replace(tmp, path)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


def plot(result: dict, path: str | os.PathLike) -> None:
    """Accuracy vs GMACs, one line per method (PNG, matplotlib's Agg backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.8))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    styles = {
        "none": ("k", "*"),
        "tca": ("tab:red", "o"),
        "evit": ("tab:blue", "s"),
        "tome": ("tab:green", "^"),
    }
    by_method: dict[str, list[dict]] = {}
    for e in result["results"]:
        by_method.setdefault(e["method"], []).append(e)
    annotated = False
    for method, entries in by_method.items():
        entries = sorted(entries, key=lambda e: e["gmacs"])
        color, marker = styles.get(method, ("tab:gray", "D"))
        xs = [e["gmacs"] for e in entries]
        if method == "none":
            ax.scatter(
                xs,
                [e["top1"] for e in entries],
                c=color,
                marker=marker,
                s=140,
                label="CLIP (none)",
                zorder=3,
            )
            continue
        ax.errorbar(
            xs,
            [e["top1"] for e in entries],
            yerr=[e.get("top1_std", 0) for e in entries],
            color=color,
            marker=marker,
            capsize=3,
            label=f"{method} + correction" if method == "tca" else method,
        )
        if method == "tca":
            ax.errorbar(
                xs,
                [e["top1_condensation_only"] for e in entries],
                yerr=[e.get("top1_condensation_only_std", 0) for e in entries],
                color=color,
                marker=marker,
                mfc="none",
                linestyle="--",
                capsize=3,
                label="tca, condensation only",
            )
        if annotated:
            continue
        annotated = True  # keep-rate labels once, on the first condensing method
        for e in entries:
            ax.annotate(
                f"R={e['keep_rate']:g}",
                (e["gmacs"], e["top1"]),
                textcoords="offset points",
                xytext=(4, 4),
                fontsize=8,
                color=color,
            )
    ax.set_xlabel('GMACs per image (1 MAC = 1 multiply-add; papers\' "GFLOPs")')
    ax.set_ylabel("top-1 accuracy (%)")
    ds = result["dataset"]
    title = f"{Path(ds['source']).name}: {ds['evaluated']} images, {len(ds['labels'])} classes\n{result['model']}"
    ax.set_title(title, fontsize=9)
    if result["random_weights"]:
        ax.text(
            0.5,
            0.5,
            "RANDOM WEIGHTS\naccuracy is meaningless",
            transform=ax.transAxes,
            ha="center",
            va="center",
            fontsize=18,
            color="red",
            alpha=0.35,
            rotation=20,
        )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


__all__ = [
    "summarise",
    "summarise_records",
    "format_table",
    "write_csv",
    "write_json",
    "plot",
    "empty_classes_note",
    "skipped_links_note",
    "RANDOM_NOTE",
    "CSV_FIELDS",
]
