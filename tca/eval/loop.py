"""The evaluation loop: every setting sees the same images in the same stream order.

``tca`` runs as a stream with a fresh reservoir per run (anchors from the images seen so far
guide condensation, each image is filed in order, then its logits are corrected); the baselines
run once, without reservoir or correction. Inputs and text embeddings live on the model's device.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..config import DEFAULT_LAYERS, CondenseConfig
from ..errors import EvalError
from ..flops import Geometry, count_macs, macs_for
from ..labels import validate_labels
from ..models import ClipModel
from ..patch import encode, is_patched, patch
from ..reservoir import RELEASED_LOGIT_SCALE, Reservoir, ReservoirConfig, stream_update
from ..timing import elapsed_ms, synchronize
from ..towers import tower_for
from .datasets import Dataset
from .loader import Batch, batches, default_workers
from .records import RECORDS_VERSION, ReservoirStore, Run, RunLog, check_records_dir
from .report import empty_classes_note, skipped_links_note, summarise
from .settings import BENCHMARK_TEMPLATES, DEFAULT_KEEP_RATES, DEFAULT_METHODS, EvalOptions

TOP_K = 5


@dataclass
class _Context:
    """What every batch of one evaluation shares, derived once from the model and labels."""

    model: torch.nn.Module  # patched
    preprocess: Callable  # PIL image -> (3, H, W) tensor
    device: torch.device
    geom: Geometry
    text: torch.Tensor  # (C, E) normalised class embeddings, on ``device``
    scale: float  # CLIP's logit scale
    top_k: int
    dataset: Dataset
    macs: dict[tuple, float] = field(default_factory=dict)  # (setting, anchors, counts) -> GMACs
    reported: set[int] = field(default_factory=set)  # dataset indices reported unreadable


@dataclass(frozen=True)
class _Feed:
    """How images reach the model."""

    batch_size: int
    workers: int
    progress: bool
    on_batch: Callable[[int, int], None] | None


def evaluate(
    clip: ClipModel,
    dataset: Dataset,
    methods: Sequence[str] = DEFAULT_METHODS,
    keep_rates: Sequence[float] = DEFAULT_KEEP_RATES,
    *,
    batch_size: int = 8,
    templates: str | None = None,
    preset: str = "default",
    shuffle_seed: int | None = 0,
    repeats: int = 1,
    limit: int | None = None,
    num_workers: int | None = None,
    records_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    progress: bool = True,
    layers: Sequence[int] = DEFAULT_LAYERS,
    merge_centers: int = 2,
    score: str = "mean",
    on_batch: Callable[[int, int], None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """Evaluate every (method, keep rate) setting on ``dataset``; returns a JSON-ready dict.

    The protocol options are those of :class:`EvalOptions` (checked there).
    records_dir: where per-image JSONL records (and TCA reservoir state) go; rerunning with the
    same arguments resumes from them (``fresh=True`` discards them). None keeps everything in
    memory. on_batch(repeat, images_done): called after every batch (e.g. for tests).
    The result's ``results`` list holds one entry per setting, averaged over repeats.
    """
    options = EvalOptions(
        methods=tuple(methods),
        keep_rates=tuple(keep_rates),
        layers=tuple(layers),
        merge_centers=merge_centers,
        score=score,
        batch_size=batch_size,
        templates=templates,
        preset=preset,
        shuffle_seed=shuffle_seed,
        repeats=repeats,
        limit=limit,
    )
    return run(
        clip,
        dataset,
        options,
        num_workers=num_workers,
        records_dir=records_dir,
        fresh=fresh,
        progress=progress,
        on_batch=on_batch,
        echo=echo,
    )


def run(
    clip: ClipModel,
    dataset: Dataset,
    options: EvalOptions,
    *,
    num_workers: int | None = None,
    records_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    echo: Callable[[str], None] | None = None,
) -> dict:
    """:func:`evaluate` with its protocol options already checked (what the CLI calls)."""
    done = execute(
        clip,
        dataset,
        options,
        num_workers=num_workers,
        records_dir=records_dir,
        fresh=fresh,
        progress=progress,
        on_batch=on_batch,
        echo=echo,
    )
    return summarise(ModelFacts.of(clip), dataset, done.runs, done.geom, done.used, done.wall)


@dataclass(frozen=True)
class ModelFacts:
    """What a report says about the model (picklable: a grid's workers send it back)."""

    weights_description: str
    is_random: bool
    device: str

    @classmethod
    def of(cls, clip: ClipModel) -> ModelFacts:
        return cls(clip.weights_description, clip.is_random, str(clip.device))


class Executed(NamedTuple):
    """The runs of one evaluation, done: their records (reservoirs dropped), the model's
    geometry, the options as used, and the wall time."""

    runs: list[Run]
    geom: Geometry
    used: dict
    wall: float


def execute(
    clip: ClipModel,
    dataset: Dataset,
    options: EvalOptions,
    *,
    num_workers: int | None = None,
    records_dir: str | os.PathLike | None = None,
    fresh: bool = False,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    echo: Callable[[str], None] | None = None,
    only_repeats: Sequence[int] | None = None,
) -> Executed:
    """Run (or resume) every run of ``options`` on ``dataset``; :func:`run` summarises them.

    only_repeats: run just these stream orders (a cell of a grid, :mod:`tca.eval.grid`); their
    records are the very files the whole run writes, so either resumes the other."""
    echo = echo or (lambda s: print(s, file=sys.stderr))
    if dataset.empty_classes:
        echo(f"warning: {empty_classes_note(dataset.empty_classes)}")
    if dataset.skipped_links:
        echo(f"warning: {skipped_links_note(dataset.skipped_links)}")
    templates = dataset_templates(dataset, options.template_set)
    labels = validate_labels(
        dataset.labels, clip.tokenizer, templates, context_length=clip.context_length
    )
    orders = options.orders(len(dataset))
    ctx = _context(clip, dataset, labels, templates)
    for s in options.settings:  # fail fast on settings this model cannot run (layers, K)
        macs_for(ctx.geom, s.config)
    records = check_records_dir(records_dir) if records_dir is not None else None
    wanted = range(len(orders)) if only_repeats is None else sorted(set(only_repeats))
    if not set(wanted) <= set(range(len(orders))):
        raise EvalError(f"repeats {list(wanted)} asked for, but there are {len(orders)}")
    runs_by_repeat = _open_runs(
        ctx, options, orders, wanted, _header(clip, ctx), records, fresh, echo
    )
    flat = [run_ for runs in runs_by_repeat for run_ in runs]
    if not flat:
        raise EvalError("nothing to run: order-independent settings run on repeat 0 only")
    resumed = sum(run_.log.done for run_ in flat)
    if resumed:
        echo(f"resuming: {resumed} image result(s) already in {records}")
    workers = default_workers() if num_workers is None else max(0, int(num_workers))
    feed = _Feed(options.batch_size, workers, progress, on_batch)
    t_wall = time.perf_counter()
    try:
        for r, runs in zip(wanted, runs_by_repeat):
            desc = f"repeat {r + 1}/{len(orders)}" if len(orders) > 1 else "eval"
            _stream(ctx, feed, runs, orders[r], r, desc)
    finally:
        for run_ in flat:
            run_.log.close()
    wall = time.perf_counter() - t_wall
    # A complete TCA run keeps its reservoir store (one reservoir's worth of disk at most): if its
    # last record line is ever cut, it resumes from the cut instead of recomputing the run.
    used = dict(
        batch_size=options.batch_size,
        templates=options.template_set,
        preset=options.preset,
        reservoir=vars(options.reservoir),
        shuffle_seed=options.shuffle_seed,
        repeats=options.repeats,
        limit=options.limit,
        num_workers=workers,
        layers=list(options.layers),
        merge_centers=options.merge_centers,
        score=options.score,
        top_k=ctx.top_k,
        records=str(records) if records is not None else None,
    )
    for run_ in flat:
        run_.reservoir = None  # the records are the result; a reservoir is large
        run_.store = None
    return Executed(flat, ctx.geom, used, wall)


def dataset_templates(dataset: Dataset, template_set: str) -> str | tuple[str, ...]:
    """The templates to prompt with: the named set, or with ``clip_benchmark`` the data set's own
    (clip_benchmark's, for its data sets)."""
    if template_set != BENCHMARK_TEMPLATES:
        return template_set
    if not dataset.templates:
        raise EvalError(
            f"--templates {BENCHMARK_TEMPLATES}: {dataset.source} defines no prompt templates of "
            f"its own (only clip_benchmark data sets do); choose a named set"
        )
    return dataset.templates


def _context(
    clip: ClipModel, dataset: Dataset, labels: list[str], templates: str | tuple[str, ...]
) -> _Context:
    model = clip.model
    if not is_patched(model):
        patch(model, CondenseConfig(method="none"))
    device = clip.device
    text = clip.encode_text(labels, templates).to(device)
    return _Context(
        model,
        clip.preprocess,
        device,
        Geometry.from_model(model),
        text,
        clip.logit_scale,
        min(TOP_K, len(labels)),
        dataset,
    )


def _digest(obj, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def _signature(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-._" else "_" for c in text)


def _header(clip: ClipModel, ctx: _Context) -> dict:
    """What every run's records must agree on to be resumed: data, weights, text, top-k."""
    visual: Any = ctx.model.visual
    return {
        "version": RECORDS_VERSION,
        "dataset": ctx.dataset.fingerprint(),
        "model": clip.weights_description,
        "weights": _signature(*tower_for(visual).signature_tensors(visual)),
        "text": _signature(ctx.text),
        "top_k": ctx.top_k,
    }


def _open_runs(
    ctx: _Context,
    options: EvalOptions,
    orders: list[list[int]],
    wanted: Sequence[int],
    header: dict,
    records: Path | None,
    fresh: bool,
    echo: Callable[[str], None],
) -> list[list[Run]]:
    """Every run of every wanted repeat, resumed from ``records`` where they match."""
    settings, res_config = options.settings, options.reservoir
    out = []
    for r in wanted:
        order = orders[r]
        order_sig = _digest([ctx.dataset.rel(i) for i in order])
        runs = []
        for s in settings:
            if r > 0 and not s.stream:
                continue  # order-independent: repeat 0 stands for every repeat
            head = header | {
                "setting": s.key,
                "config": s.config.describe(),
                "repeat": r,
                "order": order_sig,
                "n": len(order),
            }
            if s.stream:
                head |= {"batch_size": options.batch_size, "preset": vars(res_config)}
            base = records / f"{_slug(s.key)}.rep{r}.{_digest(head, 12)}" if records else None
            run_ = Run(
                s,
                r,
                order,
                RunLog(base.with_name(base.name + ".jsonl") if base else None, head, fresh),
            )
            if s.stream:
                _resume_stream(ctx, run_, res_config, base, fresh, echo)
            run_.resumed = run_.log.done
            runs.append(run_)
        out.append(runs)
    return out


def _resume_stream(
    ctx: _Context,
    run_: Run,
    res_config: ReservoirConfig,
    base: Path | None,
    fresh: bool,
    echo: Callable[[str], None],
) -> None:
    """Give a TCA run its fresh reservoir, rebuilt from the store when resuming (or restart
    the run when the stored state does not match its records)."""
    run_.reservoir = Reservoir(len(ctx.dataset.labels), res_config)
    if base is None:
        return
    g = ctx.geom
    run_.store = ReservoirStore(base, len(ctx.dataset.labels), g.depth, g.width, g.embed_dim)
    log = run_.log
    if fresh or log.done == 0:
        run_.store.discard()
    elif log.done < len(run_.order):  # (a complete run no longer needs its reservoir)
        filed = [rec["k"] for rec in log.records if "error" not in rec]
        if not run_.store.restore(run_.reservoir, filed, log.done):
            echo(
                f"warning: the reservoir state of {base.name} is missing or inconsistent; "
                f"restarting that run from the first image"
            )
            log.truncate(0)
            run_.store.discard()


def _stream(
    ctx: _Context, feed: _Feed, runs: list[Run], order: list[int], repeat: int, desc: str
) -> None:
    """One stream order through every run of a repeat, from the first position any lacks."""
    start = min((run_.log.done for run_ in runs), default=len(order))
    if start >= len(order):
        return
    items = [(k, ctx.dataset.paths[order[k]]) for k in range(start, len(order))]
    bar = tqdm(
        total=len(order),
        initial=start,
        desc=desc,
        unit="img",
        disable=not feed.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
    try:
        for batch in batches(items, ctx.preprocess, feed.batch_size, feed.workers):
            for k, msg in batch.errors.items():
                if order[k] not in ctx.reported:
                    ctx.reported.add(order[k])
                    bar.write(
                        f"skipped unreadable image {ctx.dataset.rel(order[k])}: {msg}",
                        file=sys.stderr,
                    )
            for run_ in runs:
                _run_batch(run_, ctx, batch)
            bar.update(len(batch.ks))
            if feed.on_batch is not None:
                feed.on_batch(repeat, batch.ks[-1] + 1)
    finally:
        bar.close()


def _run_batch(run_: Run, ctx: _Context, batch: Batch) -> None:
    """The images of ``batch`` this run still lacks: forward, logits (+ TCA's stream update),
    records appended."""
    todo = [k for k in batch.ks if k >= run_.log.done]
    if not todo:
        return
    sel = [j for j, k in enumerate(batch.ok_ks) if k >= run_.log.done]
    out: dict[int, dict] = {}
    for k in todo:
        i = run_.order[k]
        out[k] = {"k": k, "path": ctx.dataset.rel(i), "label": ctx.dataset.targets[i]}
        if k in batch.errors:
            out[k]["error"] = batch.errors[k]
    if sel and batch.pixels is not None:
        _forward(run_, ctx, batch, sel, out)
    run_.log.append([out[k] for k in todo])
    if run_.store is not None and run_.reservoir is not None:
        run_.store.maybe_compact(run_.reservoir, todo[-1] + 1)


def _forward(run_: Run, ctx: _Context, batch: Batch, sel: list[int], out: dict[int, dict]) -> None:
    """Run the readable images ``sel`` (indices into ``batch.ok_ks``) and fill their records."""
    assert batch.pixels is not None
    x = batch.pixels[sel] if len(sel) < len(batch.ok_ks) else batch.pixels
    x = x.to(ctx.device, non_blocking=True)
    s = run_.setting
    stream = run_.reservoir if s.stream else None
    synchronize(ctx.device)
    t0 = time.perf_counter()
    anchors = stream.anchors() if stream is not None else None
    with torch.inference_mode():
        enc = encode(ctx.model, x, s.config, anchors=anchors, record_cls=stream is not None)
        feats = F.normalize(enc.features.float(), dim=-1)
        logits = ctx.scale * feats @ ctx.text.T
    corrected = None
    if stream is not None and enc.cls_tokens is not None:
        corrected = stream_update(stream, enc.cls_tokens, logits, feats, ctx.scale)
    ms = elapsed_ms(t0, ctx.device) / len(sel)
    gmacs = []
    for counts in enc.tokens_per_image:  # ATS: every image has its own token counts
        key = (s.key, enc.anchors_used, tuple(counts))
        if key not in ctx.macs:
            ctx.macs[key] = count_macs(ctx.geom, enc.schedule.realised(counts)).gmacs
        gmacs.append(ctx.macs[key])
    top = logits.topk(ctx.top_k, dim=-1).indices.tolist()
    top_c = corrected.topk(ctx.top_k, dim=-1).indices.tolist() if corrected is not None else None
    filed = []
    for j, jj in enumerate(sel):
        k = batch.ok_ks[jj]
        out[k] |= {"pred": top[j][0], "top": top[j], "gmacs": gmacs[j], "ms": round(ms, 3)}
        if top_c is not None:
            out[k] |= {
                "pred_corrected": top_c[j][0],
                "top_corrected": top_c[j],
                "anchors": enc.anchors_used,
            }
        filed.append(k)
    if run_.store is not None and enc.cls_tokens is not None:
        # replayed through Reservoir.update, which sees logits at the released scale
        run_.store.append(filed, logits * (RELEASED_LOGIT_SCALE / ctx.scale), enc.cls_tokens, feats)
    run_.computed += len(sel)


__all__ = ["evaluate", "run", "execute", "Executed", "ModelFacts", "TOP_K"]
