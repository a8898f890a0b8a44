"""`python -m tca eval`: accuracy, GMACs and speed of CLIP vs TCA / EViT / ToMe over a labelled
image folder, in TCA's stream protocol.

    python -m tca eval DATA_DIR --methods none,tca,evit,tome --keep-rate 0.9 0.7 --out r.json

Protocol (tca-method.md §1.7-1.8, without the official runner's bugs of §6 items 9 and 17):

* Every setting (method x keep rate) sees the same images in the same stream order.
  ``--shuffle-seed S`` fixes the order; repeat ``r`` of ``--repeats N`` uses seed ``S + r``.
* ``tca`` runs as a stream with a *fresh* reservoir per run: the anchors (from the images seen so
  far) guide condensation, each image is filed into the reservoir in order, then its logits are
  corrected. Both accuracies are reported: condensation alone (``top1_condensation_only``,
  anchor-guided, before the correction) and the full method (``top1``).
* The baselines (``none``, ``evit``, ``tome``) get no reservoir and no logits correction. They are
  order-independent, so they run once even with ``--repeats N`` (their std is 0 by construction).
* With ``--batch-size B > 1`` images are still filed and corrected one by one in stream order,
  but the anchors used by the forward pass refresh once per batch (the released code uses
  batch 1; pass ``--batch-size 1`` for the exact protocol).

Every evaluated image is appended to a per-run JSONL file under ``--records`` as soon as its
batch is done (a TCA run also keeps a reservoir snapshot plus an append-only log of the images
filed since), so rerunning the same command after a crash resumes where it stopped and loses
nothing already computed. Unreadable images are reported, skipped and counted.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import math
import os
import random
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .config import DEFAULT_LAYERS, METHODS, ConfigError, CondenseConfig, parse_layers
from .flops import CONVENTION, Geometry, count_macs, macs_for
from .errors import UserError
from .images import ImageError, load_image
from .models import TEMPLATES, ClipModel, validate_labels
from .patch import encode, is_patched, patch
from .prompts import templates_for
from .reservoir import (PRESETS, RELEASED_LOGIT_SCALE, Reservoir, preset as reservoir_preset,
                        stream_update)

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif",
                              ".tiff", ".ppm", ".pgm", ".pbm", ".pnm"})
DEFAULT_METHODS = ("none", "tca", "evit", "tome")
DEFAULT_KEEP_RATES = (0.9, 0.7)
TOP_K = 5
RECORDS_VERSION = 1
# A TCA run's reservoir log is folded into a fresh snapshot once it holds this many images
# (times the reservoir's capacity), which bounds the disk it needs.
COMPACT_FACTOR = 1
COMPACT_MIN = 8
RANDOM_NOTE = ("NOTE: this model has RANDOM weights (--pretrained none): the accuracy numbers are "
               "meaningless; only GMACs, speed and the pipeline are real.")


class EvalError(UserError, ValueError):
    """A user error in the evaluation input (folder, manifest, options); printed as one line."""


def default_workers() -> int:
    """DataLoader workers: one fewer than the cores (at least 0, at most 4); 1 on a 2-core CPU."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(4, cpus - 1))


# --------------------------------------------------------------------------------------------
# Datasets: ImageFolder layout or a CSV / JSON manifest of (path, label)


@dataclass
class Dataset:
    """Labelled images. ``labels`` are the candidate class names (prompted as "a photo of a
    {label}."), ``paths[i]`` has label ``labels[targets[i]]``."""

    labels: list[str]
    paths: list[Path]
    targets: list[int]
    source: str
    kind: str  # "folder", "csv" or "json"
    root: Path
    ignored_files: int = 0  # files in the folder without an image extension

    def __len__(self) -> int:
        return len(self.paths)

    def rel(self, i: int) -> str:
        p = self.paths[i]
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            return str(p)

    def fingerprint(self) -> str:
        blob = json.dumps([self.labels, [self.rel(i) for i in range(len(self))], self.targets])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def load_dataset(source: str | os.PathLike) -> Dataset:
    """A :class:`Dataset` from an ImageFolder directory (one sub-folder per class; the folder
    name with ``_`` -> space is the label; images found recursively) or from a ``.csv`` (columns
    ``path,label``, header optional) / ``.json`` manifest (a list of ``{"path", "label"}`` or
    ``[path, label]``, or ``{"labels": [...], "images": [...]}`` to fix the candidate labels).
    Relative manifest paths are relative to the manifest. Missing or unreadable image files are
    not an error here: the evaluation reports, skips and counts them."""
    path = Path(source)
    if path.is_dir():
        return _load_folder(path)
    if not path.exists():
        raise EvalError(f"no such folder or manifest: {str(path)!r}")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        labels, rows = None, _read_csv(path)
    elif suffix == ".json":
        labels, rows = _read_json(path)
    else:
        raise EvalError(f"{path.name}: expected an ImageFolder directory or a .csv/.json manifest")
    if not rows:
        raise EvalError(f"manifest {path.name} lists no images")
    if labels is None:
        labels = sorted({label for _, label in rows})
    index = {label: i for i, label in enumerate(labels)}
    unknown = sorted({label for _, label in rows if label not in index})
    if unknown:
        raise EvalError(f"manifest {path.name}: images labelled {', '.join(map(repr, unknown[:5]))} "
                        f"but those are not in its \"labels\" list")
    base = path.parent
    paths = [(base / p) if not Path(p).is_absolute() else Path(p) for p, _ in rows]
    return Dataset(list(labels), paths, [index[label] for _, label in rows], str(path),
                   suffix[1:], base)


def _load_folder(root: Path) -> Dataset:
    classes = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
        hint = f" (it holds {len(loose)} loose image(s))" if loose else ""
        raise EvalError(f"{root} has no class sub-folders{hint}: the ImageFolder layout is "
                        f"DATA_DIR/<label>/<image>, or pass a .csv/.json manifest of path,label")
    labels, paths, targets, ignored = [], [], [], 0
    for c, d in enumerate(classes):
        labels.append(d.name.replace("_", " ").strip())
        for p in sorted(d.rglob("*")):
            rel = p.relative_to(d).parts
            if any(part.startswith(".") for part in rel) or not p.is_file():
                continue
            if p.suffix.lower() in IMAGE_EXTENSIONS:
                paths.append(p)
                targets.append(c)
            else:
                ignored += 1
    if not paths:
        raise EvalError(f"{root} has class folders ({', '.join(d.name for d in classes[:5])}"
                        f"{', ...' if len(classes) > 5 else ''}) but no image files in them")
    return Dataset(labels, paths, targets, str(root), "folder", root, ignored)


_PATH_COLUMNS = ("path", "image", "file", "filename", "filepath")
_LABEL_COLUMNS = ("label", "class", "category", "target")


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise EvalError(f"cannot read manifest {path.name}: {exc}") from None
    if not rows:
        return []
    head = [c.strip().lower() for c in rows[0]]
    pcol = next((head.index(c) for c in _PATH_COLUMNS if c in head), None)
    lcol = next((head.index(c) for c in _LABEL_COLUMNS if c in head), None)
    if pcol is not None and lcol is not None:
        rows = rows[1:]
    elif pcol is not None or lcol is not None:
        raise EvalError(f"manifest {path.name}: its header needs both a path column "
                        f"({'/'.join(_PATH_COLUMNS)}) and a label column ({'/'.join(_LABEL_COLUMNS)})")
    else:
        pcol, lcol = 0, 1
    out = []
    for n, r in enumerate(rows, start=2 if pcol is not None else 1):
        if len(r) <= max(pcol, lcol) or not r[pcol].strip() or not r[lcol].strip():
            raise EvalError(f"manifest {path.name} row {n}: expected a path and a label, got {r!r}")
        out.append((r[pcol].strip(), r[lcol].strip()))
    return out


def _read_json(path: Path) -> tuple[list[str] | None, list[tuple[str, str]]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EvalError(f"cannot read manifest {path.name}: {exc}") from None
    labels = None
    if isinstance(data, dict):
        labels = data.get("labels")
        data = data.get("images", data.get("items"))
        if labels is not None and not (isinstance(labels, list) and all(isinstance(l, str) for l in labels)):
            raise EvalError(f"manifest {path.name}: \"labels\" must be a list of strings")
    if not isinstance(data, list):
        raise EvalError(f"manifest {path.name}: expected a list of {{\"path\", \"label\"}} objects "
                        f"(or {{\"labels\": [...], \"images\": [...]}})")
    out = []
    for n, e in enumerate(data):
        if isinstance(e, dict):
            p = next((e[c] for c in _PATH_COLUMNS if c in e), None)
            label = next((e[c] for c in _LABEL_COLUMNS if c in e), None)
        elif isinstance(e, (list, tuple)) and len(e) == 2:
            p, label = e
        else:
            p = label = None
        if not isinstance(p, str) or not isinstance(label, str) or not p.strip() or not label.strip():
            raise EvalError(f"manifest {path.name} item {n}: expected a path and a label, got {e!r}")
        out.append((p.strip(), label.strip()))
    return ([l.strip() for l in labels] if labels is not None else None), out


# --------------------------------------------------------------------------------------------
# Settings and stream orders


@dataclass(frozen=True)
class Setting:
    """One evaluated configuration: a method at a keep rate (``none`` has no keep rate)."""

    method: str
    keep_rate: float | None
    config: CondenseConfig

    @property
    def key(self) -> str:
        return "none" if self.method == "none" else f"{self.method}-R{self.keep_rate:g}"

    @property
    def name(self) -> str:
        return "none (CLIP)" if self.method == "none" else f"{self.method} R={self.keep_rate:g}"

    @property
    def stream(self) -> bool:
        """Stateful (depends on the stream order): only ``tca``."""
        return self.method == "tca"


def make_settings(methods: Sequence[str] = DEFAULT_METHODS,
                  keep_rates: Sequence[float] = DEFAULT_KEEP_RATES,
                  layers: Sequence[int] = DEFAULT_LAYERS, merge_centers: int = 2,
                  score: str = "mean") -> list[Setting]:
    methods = list(dict.fromkeys(m.strip().lower() for m in methods if m.strip()))
    if not methods:
        raise EvalError("no methods given; choose from " + ", ".join(METHODS))
    for m in methods:
        if m not in METHODS:
            raise ConfigError(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    rates = list(dict.fromkeys(float(r) for r in keep_rates))
    if not rates and any(m != "none" for m in methods):
        raise EvalError("no keep rates given")
    out = []
    for m in methods:
        if m == "none":
            out.append(Setting("none", None, CondenseConfig(method="none")))
            continue
        for r in rates:
            out.append(Setting(m, r, CondenseConfig(method=m, keep_rate=r, layers=tuple(layers),
                                                    merge_centers=merge_centers, score=score)))
    return out


def stream_orders(n: int, shuffle_seed: int | None = 0, repeats: int = 1,
                  limit: int | None = None) -> list[list[int]]:
    """The image order of each repeat (dataset indices).

    Repeat 0 is the file order shuffled with ``shuffle_seed`` (unshuffled if None); ``limit``
    keeps its first N images, the same subset in every repeat; repeat r > 0 reshuffles that
    subset with seed ``shuffle_seed + r``."""
    if repeats < 1:
        raise EvalError(f"--repeats must be >= 1, got {repeats}")
    if limit is not None and limit < 1:
        raise EvalError(f"--limit must be >= 1, got {limit}")
    if shuffle_seed is None and repeats > 1:
        raise EvalError("--repeats N > 1 needs shuffled orders: give --shuffle-seed")
    base = list(range(n))
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(base)
    base = base[:limit] if limit is not None else base
    orders = [base]
    for r in range(1, repeats):
        again = list(base)
        random.Random(shuffle_seed + r).shuffle(again)
        orders.append(again)
    return orders


# --------------------------------------------------------------------------------------------
# Resumable per-run output


class RunLog:
    """The per-image JSONL records of one run (a setting on one stream order).

    Line 1 is a header describing the run; each further line is one image, at stream position
    ``k`` = 0, 1, 2, ... . Existing records with the same header are resumed; a torn last line
    (a crash mid-write) is dropped. Every batch is flushed and fsynced when appended."""

    def __init__(self, path: Path | None, header: dict, fresh: bool = False) -> None:
        self.path = path
        self.header = header
        self.records: list[dict] = []
        self._f = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not fresh:
            self.records = self._read(path, header)
        self._rewrite()

    @staticmethod
    def _read(path: Path, header: dict) -> list[dict]:
        records = []
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            head = json.loads(lines[0]).get("header")
        except (json.JSONDecodeError, AttributeError):
            return []
        if head != header:
            return []
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # torn line: everything after it is discarded
            if not isinstance(rec, dict) or rec.get("k") != len(records):
                break
            records.append(rec)
        return records

    def _rewrite(self) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"header": self.header}) + "\n")
            for rec in self.records:
                f.write(json.dumps(rec) + "\n")
        os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    @property
    def done(self) -> int:
        return len(self.records)

    def truncate(self, n: int) -> None:
        if n < len(self.records):
            self.records = self.records[:n]
            if self.path is not None:
                self.close()
                self._rewrite()

    def append(self, records: list[dict]) -> None:
        self.records.extend(records)
        if self._f is not None:
            self._f.write("".join(json.dumps(r) + "\n" for r in records))
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class ReservoirStore:
    """Makes a TCA stream resumable: a snapshot of the reservoir (``.pt``) plus an append-only
    binary log (``.bin``) of every image filed since, replayed through ``Reservoir.update`` on
    resume (bit-identical state). The log is folded into a new snapshot once it is as large as
    the reservoir itself, so disk use stays bounded."""

    def __init__(self, base: Path, num_classes: int, depth: int, width: int, embed: int) -> None:
        self.snapshot = base.with_name(base.name + ".reservoir.pt")
        self.log = base.with_name(base.name + ".reservoir.bin")
        self.dtype = np.dtype([("k", "<i8"), ("logits", "<f4", (num_classes,)),
                               ("cls", "<f4", (depth, width)), ("emb", "<f4", (embed,))])
        self.logged = 0

    def discard(self) -> None:
        for p in (self.snapshot, self.log):
            p.unlink(missing_ok=True)

    def restore(self, reservoir: Reservoir, filed: list[int], upto: int) -> bool:
        """Rebuild ``reservoir`` as it was after stream position ``upto`` - 1. ``filed``: the
        positions < ``upto`` whose images were filed (the readable ones). Returns False (and
        leaves the reservoir empty) when the stored state does not cover exactly those."""
        reservoir.reset()
        start = 0
        if self.snapshot.exists():
            try:
                state = torch.load(self.snapshot, map_location="cpu", weights_only=True)
                start = int(state["position"])
                if start > upto:
                    raise ValueError("snapshot does not match the records")
                reservoir.load_state_dict(state["reservoir"])
            except Exception:  # noqa: BLE001 - unreadable/inconsistent: the caller restarts
                reservoir.reset()
                return False
        records = self._read_log()
        keep = records[(records["k"] >= start) & (records["k"] < upto)]
        if keep["k"].tolist() != [k for k in filed if start <= k < upto]:
            reservoir.reset()
            return False
        for r in keep:
            reservoir.update(torch.from_numpy(r["cls"].copy()), torch.from_numpy(r["logits"].copy()),
                             torch.from_numpy(r["emb"].copy()))
        # Drop log entries past the resumed position (filed, but their records never written).
        n_valid = int(np.searchsorted(records["k"], upto)) if len(records) else 0
        if self.log.exists():
            with open(self.log, "r+b") as f:
                f.truncate(n_valid * self.dtype.itemsize)
        self.logged = len(keep)
        return True

    def _read_log(self) -> np.ndarray:
        if not self.log.exists():
            return np.zeros(0, dtype=self.dtype)
        raw = self.log.read_bytes()
        whole = len(raw) // self.dtype.itemsize * self.dtype.itemsize  # drop a torn record
        return np.frombuffer(raw[:whole], dtype=self.dtype)

    def append(self, ks: list[int], logits: torch.Tensor, cls: torch.Tensor, emb: torch.Tensor) -> None:
        rec = np.zeros(len(ks), dtype=self.dtype)
        rec["k"] = ks
        rec["logits"] = logits.detach().float().cpu().numpy()
        rec["cls"] = cls.detach().float().cpu().numpy()
        rec["emb"] = emb.detach().float().cpu().numpy()
        with open(self.log, "ab") as f:
            f.write(rec.tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.logged += len(ks)

    def maybe_compact(self, reservoir: Reservoir, position: int) -> None:
        capacity = reservoir.num_classes * reservoir.config.size
        if self.logged < max(COMPACT_MIN, COMPACT_FACTOR * capacity):
            return
        state = {"position": position, "reservoir": reservoir.state_dict()}
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.snapshot)
        with open(self.log, "wb"):
            pass
        self.logged = 0


# --------------------------------------------------------------------------------------------
# Image loading (DataLoader workers overlap decoding with the model)


class _Images(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[int, Path]], preprocess: Callable) -> None:
        self.items = items
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, j: int):
        k, path = self.items[j]
        try:
            return k, self.preprocess(load_image(path)), None
        except ImageError as exc:
            return k, None, str(exc)
        except Exception as exc:  # noqa: BLE001 - any decoder/transform failure skips the image
            return k, None, f"{path.name} could not be processed ({type(exc).__name__}: {str(exc)[:120]})"


def _collate(items):
    ks = [k for k, _, _ in items]
    ok = [(k, x) for k, x, _ in items if x is not None]
    errors = {k: e for k, _, e in items if e is not None}
    pixels = torch.stack([x for _, x in ok]) if ok else None
    return ks, [k for k, _ in ok], pixels, errors


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _batches(items, preprocess, batch_size: int, workers: int):
    data = _Images(items, preprocess)
    if workers > 0:
        return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                           num_workers=workers, collate_fn=_collate,
                                           worker_init_fn=_worker_init, prefetch_factor=2)
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False,
                                       num_workers=0, collate_fn=_collate)


# --------------------------------------------------------------------------------------------
# The evaluation


class _Run:
    def __init__(self, setting: Setting, repeat: int, order: list[int], log: RunLog,
                 reservoir: Reservoir | None, store: ReservoirStore | None) -> None:
        self.setting = setting
        self.repeat = repeat
        self.order = order
        self.log = log
        self.reservoir = reservoir
        self.store = store
        self.computed = 0  # images run through the model in this call
        self.resumed = 0  # stream positions taken from existing records


def _signature(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def evaluate(clip: ClipModel, dataset: Dataset, methods: Sequence[str] = DEFAULT_METHODS,
             keep_rates: Sequence[float] = DEFAULT_KEEP_RATES, *, batch_size: int = 8,
             templates: str | None = None, preset: str = "default", shuffle_seed: int | None = 0,
             repeats: int = 1, limit: int | None = None, num_workers: int | None = None,
             records_dir: str | os.PathLike | None = None, fresh: bool = False,
             progress: bool = True, layers: Sequence[int] = DEFAULT_LAYERS,
             merge_centers: int = 2, score: str = "mean",
             on_batch: Callable[[int, int], None] | None = None,
             echo: Callable[[str], None] | None = None) -> dict:
    """Evaluate every (method, keep rate) setting on ``dataset``; returns a JSON-ready dict.

    records_dir: where per-image JSONL records (and TCA reservoir state) go; rerunning with the
    same arguments resumes from them (``fresh=True`` discards them). None keeps everything in
    memory. on_batch(repeat, images_done): called after every batch (e.g. for tests).
    The result's ``results`` list holds one entry per setting, averaged over repeats.
    templates: a template-set name; None = the set the preset implies (``tca.prompts``).
    GMACs are per image from the token counts each image had (ATS varies), averaged.
    """
    if batch_size < 1:
        raise EvalError(f"--batch-size must be >= 1, got {batch_size}")
    settings = make_settings(methods, keep_rates, layers, merge_centers, score)
    res_config = reservoir_preset(preset)
    templates = templates_for(preset, templates)
    echo = echo or (lambda s: print(s, file=sys.stderr))
    labels = validate_labels(dataset.labels, clip.tokenizer, templates,
                             context_length=clip.context_length)
    orders = stream_orders(len(dataset), shuffle_seed, repeats, limit)
    workers = default_workers() if num_workers is None else max(0, int(num_workers))
    model = clip.model
    if not is_patched(model):
        patch(model, CondenseConfig(method="none"))
    geom = Geometry.from_model(model)
    visual = model.visual
    text = clip.encode_text(labels, templates)
    with torch.no_grad():
        scale = clip.logit_scale
    top_k = min(TOP_K, len(labels))
    model_sig = _signature(visual.conv1.weight, visual.proj if visual.proj is not None else
                           visual.conv1.weight)
    text_sig = _signature(text)
    records = Path(records_dir) if records_dir is not None else None
    for s in settings:  # fail fast on settings this model cannot run (layers, K)
        macs_for(geom, s.config)

    runs_by_repeat: list[list[_Run]] = []
    for r, order in enumerate(orders):
        order_sig = hashlib.sha256(json.dumps([dataset.rel(i) for i in order]).encode()).hexdigest()[:16]
        runs = []
        for s in settings:
            if r > 0 and not s.stream:
                continue  # order-independent: repeat 0 stands for every repeat
            header = {"version": RECORDS_VERSION, "setting": s.key, "config": s.config.describe(),
                      "repeat": r, "order": order_sig, "n": len(order),
                      "dataset": dataset.fingerprint(), "model": clip.weights_description,
                      "weights": model_sig, "text": text_sig, "top_k": top_k}
            if s.stream:
                header |= {"batch_size": batch_size, "preset": vars(res_config)}
            run_hash = hashlib.sha256(json.dumps(header, sort_keys=True).encode()).hexdigest()[:12]
            base = records / f"{_slug(s.key)}.rep{r}.{run_hash}" if records is not None else None
            log = RunLog(base.with_name(base.name + ".jsonl") if base else None, header, fresh)
            reservoir = store = None
            if s.stream:
                reservoir = Reservoir(len(labels), res_config)
                if base is not None:
                    store = ReservoirStore(base, len(labels), geom.depth, geom.width, geom.embed_dim)
                    if fresh or log.done == 0:
                        store.discard()
                    elif log.done >= len(order):
                        pass  # complete: the reservoir is no longer needed
                    else:
                        filed = [rec["k"] for rec in log.records if "error" not in rec]
                        ok = store.restore(reservoir, filed, log.done)
                        if not ok:
                            echo(f"warning: the reservoir state of {base.name} is missing or "
                                 f"inconsistent; restarting that run from the first image")
                            log.truncate(0)
                            store.discard()
            runs.append(_Run(s, r, order, log, reservoir, store))
            runs[-1].resumed = log.done
        runs_by_repeat.append(runs)

    resumed = sum(run.log.done for runs in runs_by_repeat for run in runs)
    if resumed:
        echo(f"resuming: {resumed} image result(s) already in {records}")
    reported: set[int] = set()
    macs_cache: dict = {}
    t_wall = time.perf_counter()
    try:
        for r, (order, runs) in enumerate(zip(orders, runs_by_repeat)):
            start = min((run.log.done for run in runs), default=len(order))
            if start >= len(order):
                continue
            items = [(k, dataset.paths[order[k]]) for k in range(start, len(order))]
            bar = _progress(len(order), start, f"repeat {r + 1}/{len(orders)}" if len(orders) > 1
                            else "eval", progress)
            try:
                for ks, ok_ks, pixels, errors in _batches(items, clip.preprocess, batch_size, workers):
                    for k, msg in errors.items():
                        if order[k] not in reported:
                            reported.add(order[k])
                            bar.write(f"skipped unreadable image {dataset.rel(order[k])}: {msg}",
                                      file=sys.stderr)
                    for run in runs:
                        _run_batch(run, dataset, ks, ok_ks, pixels, errors, model, geom, text,
                                   scale, top_k, macs_cache)
                    bar.update(len(ks))
                    if on_batch is not None:
                        on_batch(r, ks[-1] + 1)
            finally:
                bar.close()
    finally:
        for runs in runs_by_repeat:
            for run in runs:
                run.log.close()
    wall = time.perf_counter() - t_wall
    for runs in runs_by_repeat:
        for run in runs:
            if run.store is not None:
                run.store.discard()  # complete: the JSONL records are all that is needed

    return _summarise(clip, dataset, settings, orders, runs_by_repeat, geom, dict(
        batch_size=batch_size, templates=templates, preset=preset, reservoir=vars(res_config),
        shuffle_seed=shuffle_seed, repeats=repeats, limit=limit, num_workers=workers,
        layers=list(layers), merge_centers=merge_centers, score=score, top_k=top_k,
        records=str(records) if records is not None else None), wall)


def _progress(total: int, initial: int, desc: str, enabled: bool):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a requirement
        tqdm = None
    if tqdm is not None:
        return tqdm(total=total, initial=initial, desc=desc, unit="img", disable=not enabled,
                    file=sys.stderr, dynamic_ncols=True)

    class _Plain:  # pragma: no cover
        def update(self, n): pass
        def close(self): pass
        def write(self, s): print(s, file=sys.stderr)
    return _Plain()


def _run_batch(run: _Run, dataset: Dataset, ks, ok_ks, pixels, errors, model, geom, text, scale,
               top_k: int, macs_cache: dict) -> None:
    todo = [k for k in ks if k >= run.log.done]
    if not todo:
        return
    sel = [j for j, k in enumerate(ok_ks) if k >= run.log.done]
    out: dict[int, dict] = {}
    for k in todo:
        i = run.order[k]
        out[k] = {"k": k, "path": dataset.rel(i), "label": dataset.targets[i]}
        if k in errors:
            out[k]["error"] = errors[k]
    if sel and pixels is not None:
        x = pixels[sel] if len(sel) < len(ok_ks) else pixels
        s = run.setting
        t0 = time.perf_counter()
        anchors = run.reservoir.anchors() if s.stream else None
        with torch.inference_mode():
            enc = encode(model, x, s.config, anchors=anchors, record_cls=s.stream)
            feats = F.normalize(enc.features.float(), dim=-1)
            logits = scale * feats @ text.T
        corrected = stream_update(run.reservoir, enc.cls_tokens, logits, feats, scale) \
            if s.stream else None
        ms = (time.perf_counter() - t0) * 1e3 / len(sel)
        gmacs_per_image = []
        for counts in enc.tokens_per_image:  # ATS: every image has its own counts
            key = (s.key, enc.anchors_used, tuple(counts))
            if key not in macs_cache:
                macs_cache[key] = count_macs(geom, enc.schedule.realised(counts)).gmacs
            gmacs_per_image.append(macs_cache[key])
        top = logits.topk(top_k, dim=-1).indices.tolist()
        top_c = corrected.topk(top_k, dim=-1).indices.tolist() if corrected is not None else None
        filed = []
        for j, jj in enumerate(sel):
            k = ok_ks[jj]
            rec = out[k]
            rec |= {"pred": top[j][0], "top": top[j], "gmacs": gmacs_per_image[j],
                    "ms": round(ms, 3)}
            if top_c is not None:
                rec |= {"pred_corrected": top_c[j][0], "top_corrected": top_c[j],
                        "anchors": enc.anchors_used}
            filed.append(k)
        if run.store is not None:
            # replayed through Reservoir.update, which sees logits at the released scale
            run.store.append(filed, logits * (RELEASED_LOGIT_SCALE / scale), enc.cls_tokens, feats)
        run.computed += len(sel)
    run.log.append([out[k] for k in todo])
    if run.store is not None:
        run.store.maybe_compact(run.reservoir, todo[-1] + 1)


# --------------------------------------------------------------------------------------------
# Summaries, table, CSV, plot


def summarise_records(records: list[dict], stream: bool = False) -> dict:
    """Metrics of one run from its per-image records (accuracies in %)."""
    good = [r for r in records if "error" not in r]
    n = len(good)
    out = {"n_images": n, "unreadable": len(records) - n}
    if not n:
        return out | {"top1": math.nan, "top5": math.nan, "gmacs": math.nan, "images_per_s": math.nan}
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


_AVERAGED = ("top1", "top5", "top1_condensation_only", "top5_condensation_only", "gmacs",
             "images_per_s", "anchors_fraction")


def _summarise(clip, dataset, settings, orders, runs_by_repeat, geom, options, wall) -> dict:
    base_gmacs = macs_for(geom, CondenseConfig(method="none")).gmacs
    unreadable = sorted({dataset.rel(run.order[rec["k"]]) for runs in runs_by_repeat for run in runs
                         for rec in run.log.records if "error" in rec})
    results = []
    for s in settings:
        runs = [run for runs in runs_by_repeat for run in runs if run.setting == s]
        per = [summarise_records(run.log.records, s.stream) | {"repeat": run.repeat,
               "computed": run.computed, "resumed": run.resumed} for run in runs]
        entry = {"setting": s.name, "method": s.method, "keep_rate": s.keep_rate,
                 "config": s.config.describe(), "repeats": len(per),
                 "order_independent": not s.stream,
                 "n_images": per[0]["n_images"], "unreadable": per[0]["unreadable"],
                 "gmacs_baseline": base_gmacs,
                 "gmacs_analytic": macs_for(geom, s.config).gmacs}
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
        "dataset": {"source": dataset.source, "kind": dataset.kind, "labels": dataset.labels,
                    "num_images": len(dataset), "evaluated": len(orders[0]),
                    "unreadable": len(unreadable), "unreadable_files": unreadable,
                    "ignored_non_image_files": dataset.ignored_files},
        "options": options,
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__},
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
    lines = [f"{result['model']}  |  {ds['evaluated']} images, {len(ds['labels'])} classes "
             f"({ds['source']})  |  batch {result['options']['batch_size']}, "
             f"templates {result['options']['templates']}, preset {result['options']['preset']}"
             + (f", {repeats} stream orders (mean ± std)" if repeats > 1 else "")]
    head = (f"{'setting':<14}{'top-1 %':>15}{f'top-{top_k} %':>15}{'top-1 no corr.':>16}"
            f"{'GMACs':>8}{'x fewer':>9}{'img/s':>8}{'n':>6}")
    lines += [head, "-" * len(head)]
    for e in result["results"]:
        std = repeats > 1 and not e["order_independent"]
        lines.append(
            f"{e['setting']:<14}{_fmt(e.get('top1'), e.get('top1_std'), show_std=std):>15}"
            f"{_fmt(e.get('top5'), e.get('top5_std'), show_std=std):>15}"
            f"{_fmt(e.get('top1_condensation_only'), e.get('top1_condensation_only_std'), show_std=std):>16}"
            f"{_fmt(e.get('gmacs'), digits=2):>8}{_fmt(e.get('gmacs_ratio'), digits=2):>9}"
            f"{_fmt(e.get('images_per_s'), digits=2):>8}{e['n_images']:>6}")
    lines.append(f"GMACs: mean per image, {CONVENTION}; 'x fewer' = baseline / setting.")
    lines.append("tca: top-1 is with the logits correction (fresh reservoir per run); 'no corr.' "
                 "is the anchor-guided condensation alone. Baselines get no correction.")
    if result["options"]["batch_size"] > 1 and any(e["method"] == "tca" for e in result["results"]):
        lines.append(f"tca with batch {result['options']['batch_size']}: images are filed and "
                     f"corrected one by one, anchors refresh once per batch (--batch-size 1 = "
                     f"the released protocol).")
    lines.append("img/s: from the median model time per image (encode + logits + reservoir), "
                 "batches of all settings interleaved; decoding overlaps it in DataLoader workers.")
    if ds["unreadable"]:
        lines.append(f"skipped {ds['unreadable']} unreadable image(s): "
                     f"{', '.join(ds['unreadable_files'][:5])}{' ...' if ds['unreadable'] > 5 else ''}")
    if result["random_weights"]:
        lines.append(RANDOM_NOTE)
    return "\n".join(lines)


CSV_FIELDS = ("setting", "method", "keep_rate", "top1", "top1_std", "top5", "top5_std",
              "top1_condensation_only", "top1_condensation_only_std", "gmacs", "gmacs_baseline",
              "gmacs_ratio", "images_per_s", "images_per_s_std", "n_images", "unreadable",
              "repeats", "model", "random_weights")


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
    styles = {"none": ("k", "*"), "tca": ("tab:red", "o"), "evit": ("tab:blue", "s"),
              "tome": ("tab:green", "^")}
    by_method: dict[str, list[dict]] = {}
    for e in result["results"]:
        by_method.setdefault(e["method"], []).append(e)
    annotated = False
    for method, entries in by_method.items():
        entries = sorted(entries, key=lambda e: e["gmacs"])
        color, marker = styles.get(method, ("tab:gray", "D"))
        xs = [e["gmacs"] for e in entries]
        if method == "none":
            ax.scatter(xs, [e["top1"] for e in entries], c=color, marker=marker, s=140,
                       label="CLIP (none)", zorder=3)
            continue
        ax.errorbar(xs, [e["top1"] for e in entries], yerr=[e.get("top1_std", 0) for e in entries],
                    color=color, marker=marker, capsize=3,
                    label=f"{method} + correction" if method == "tca" else method)
        if method == "tca":
            ax.errorbar(xs, [e["top1_condensation_only"] for e in entries],
                        yerr=[e.get("top1_condensation_only_std", 0) for e in entries],
                        color=color, marker=marker, mfc="none", linestyle="--", capsize=3,
                        label="tca, condensation only")
        if annotated:
            continue
        annotated = True  # keep-rate labels once, on the first condensing method
        for e in entries:
            ax.annotate(f"R={e['keep_rate']:g}", (e["gmacs"], e["top1"]), textcoords="offset points",
                        xytext=(4, 4), fontsize=8, color=color)
    ax.set_xlabel("GMACs per image (1 MAC = 1 multiply-add; papers' \"GFLOPs\")")
    ax.set_ylabel("top-1 accuracy (%)")
    ds = result["dataset"]
    title = f"{Path(ds['source']).name}: {ds['evaluated']} images, {len(ds['labels'])} classes\n{result['model']}"
    ax.set_title(title, fontsize=9)
    if result["random_weights"]:
        ax.text(0.5, 0.5, "RANDOM WEIGHTS\naccuracy is meaningless", transform=ax.transAxes,
                ha="center", va="center", fontsize=18, color="red", alpha=0.35, rotation=20)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")


# --------------------------------------------------------------------------------------------
# CLI


def _float_list(values: Sequence[str]) -> list[float]:
    out = []
    for v in values:
        for part in str(v).replace(";", ",").split(","):
            if part.strip():
                try:
                    out.append(float(part))
                except ValueError:
                    raise EvalError(f"keep rates must be numbers like 0.9, got {part.strip()!r}") from None
    return out


def _seed(text: str) -> int | None:
    if text.strip().lower() in ("none", "off", "no"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from None


def add_parser(sub) -> None:
    from .cli import add_model_args

    p = sub.add_parser(
        "eval", help="accuracy / GMACs / speed of CLIP vs TCA, EViT, ToMe over a labelled folder",
        description="Evaluate CLIP zero-shot classification with and without token condensation "
                    "over a labelled image folder (ImageFolder layout: DATA_DIR/<label>/<image>, "
                    "'_' in folder names becomes a space) or a CSV/JSON manifest of path,label. "
                    "tca runs as a stream (fresh reservoir, anchors + logits correction); the "
                    "baselines get no correction. Rerun the same command to resume.")
    p.add_argument("data", help="ImageFolder directory, or a .csv / .json manifest of path,label")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated, from {', '.join(METHODS)} (default: all)")
    p.add_argument("--keep-rate", "--keep-rates", dest="keep_rates", nargs="+",
                   default=[",".join(f"{r:g}" for r in DEFAULT_KEEP_RATES)], metavar="R",
                   help="keep rates R in (0, 1], space- or comma-separated (default 0.9 0.7)")
    add_model_args(p)
    p.add_argument("--layers", default="3,6,9", help="condensing block indices (default 3,6,9)")
    p.add_argument("--merge-centers", type=int, default=2, help="TCA coreset centres K (default 2)")
    p.add_argument("--score", default="mean", choices=("mean", "rank"))
    p.add_argument("--preset", default="default", choices=tuple(PRESETS), metavar="NAME",
                   help="TCA reservoir hyperparameters (M, sigma, lambda, beta), one of: "
                        f"{', '.join(PRESETS)} (default = ImageNet's)")
    p.add_argument("--templates", default=None, choices=tuple(TEMPLATES), metavar="NAME",
                   help="prompt templates, one of: " + ", ".join(TEMPLATES) + " (default: the "
                        "preset's dataset templates, 'single' for the default preset)")
    p.add_argument("--shuffle-seed", type=_seed, default=0,
                   help="stream order seed (default 0; 'none' = file order); repeat r uses S + r")
    p.add_argument("--repeats", type=int, default=1, help="stream orders to average (mean ± std)")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate a random sample of N images (the same N in every repeat)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images per forward (default 8; tca anchors refresh once per batch)")
    p.add_argument("--workers", type=int, default=None,
                   help=f"DataLoader processes decoding images (default {default_workers()} here)")
    p.add_argument("--out", default=None, help="write the full results as JSON")
    p.add_argument("--csv", default=None, help="write one row per setting as CSV")
    p.add_argument("--plot", default=None, help="write accuracy vs GMACs as a PNG")
    p.add_argument("--records", default=None,
                   help="folder of per-image JSONL records used to resume (default: OUT with "
                        ".records instead of .json, else ./results.records)")
    p.add_argument("--fresh", action="store_true", help="ignore and overwrite existing records")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from .cli import CliError, load_from_args

    dataset = load_dataset(args.data)  # fail on a bad folder before loading the model
    keep_rates = _float_list(args.keep_rates)
    methods = [m for m in args.methods.split(",") if m.strip()]
    settings = make_settings(methods, keep_rates, parse_layers(args.layers), args.merge_centers,
                             args.score)
    for name, value in (("--batch-size", args.batch_size), ("--repeats", args.repeats)):
        if value < 1:
            raise CliError(f"{name} must be >= 1, got {value}")
    stream_orders(len(dataset), args.shuffle_seed, args.repeats, args.limit)  # validate early
    if args.records:
        records = Path(args.records)
    elif args.out:
        records = Path(args.out).with_suffix(".records")
    else:
        records = Path("results.records")
    clip = load_from_args(args)
    if clip.is_random:
        print(RANDOM_NOTE, file=sys.stderr)
    print(f"evaluating {len(settings)} setting(s) on {dataset.source}; per-image records in "
          f"{records}/ (rerun the same command to resume)", file=sys.stderr)
    result = evaluate(clip, dataset, methods, keep_rates, batch_size=args.batch_size,
                      templates=args.templates, preset=args.preset,
                      shuffle_seed=args.shuffle_seed, repeats=args.repeats, limit=args.limit,
                      num_workers=args.workers, records_dir=records, fresh=args.fresh,
                      progress=not args.no_progress, layers=parse_layers(args.layers),
                      merge_centers=args.merge_centers, score=args.score)
    print(format_table(result))
    for path, writer in ((args.out, write_json), (args.csv, write_csv), (args.plot, plot)):
        if path:
            writer(result, path)
            print(f"wrote {path}")
    return 0


__all__ = ["evaluate", "load_dataset", "Dataset", "Setting", "make_settings", "stream_orders",
           "summarise_records", "format_table", "write_csv", "write_json", "plot", "RunLog",
           "ReservoirStore", "EvalError", "RANDOM_NOTE", "add_parser", "main"]
