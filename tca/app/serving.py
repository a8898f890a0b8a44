"""What a model server shared by strangers needs, with no UI code: models loaded on demand
(least recently used dropped, the random-weights fallback with a note fit for visitors), an
"image lane" that makes the vision passes take turns, and a per-visitor gate (one model
request at a time).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import open_clip

from tca.errors import InputError, WeightsUnavailableError, without_dirs
from tca.models import ClipModel, load_model
from tca.precision import cast
from tca.weights import WEIGHTS_HELP


@dataclass
class LoadedModel:
    """A cached model plus how its weights came about.

    requested: the pretrained tag or checkpoint asked for (None = random was asked for).
    note: why the weights are random although real ones were asked for, else None.
    """

    clip: ClipModel
    requested: str | None
    note: str | None = None

    @property
    def is_random(self) -> bool:
        return self.clip.is_random

    @property
    def name(self) -> str:
        return self.clip.name


class ModelCache:
    """Models loaded lazily on first use, at most ``max_models`` kept (least recently used go).

    pretrained: the tag every model is asked for (None / "none": random weights).
    checkpoint: a local weights file for ``checkpoint_model`` only (it fits one architecture).
    When real weights cannot be had, the model is loaded with random weights instead and
    ``LoadedModel.note`` says why and how to supply real ones. Thread-safe: one lock guards the
    dict, another serialises loading so a model is never loaded twice at once.
    precision / device: every model is loaded in float32 on the CPU, then cast to
    ``precision`` (``tca.precision.cast``, open_clip's own mixed precision) and moved to
    ``device``; :meth:`place_on` moves them later (a ZeroGPU worker moves its copies to CUDA).
    """

    def __init__(
        self,
        pretrained: str | None = "openai",
        checkpoint: str | None = None,
        checkpoint_model: str | None = None,
        max_models: int = 2,
        seed: int = 0,
        loader: Callable[..., ClipModel] = load_model,
        precision: str = "fp32",
        device: str = "cpu",
    ) -> None:
        if isinstance(pretrained, str) and pretrained.lower() in ("", "none", "random"):
            pretrained = None
        self.pretrained = pretrained
        self.checkpoint = checkpoint or None
        self.checkpoint_model = checkpoint_model
        self.max_models = max(1, max_models)
        self.seed = seed
        self._loader = loader
        self.precision = precision
        self.device = device
        self._models: OrderedDict[str, LoadedModel] = OrderedDict()
        self._loading: set[str] = set()
        self._new_locks()
        # A forked child (a ZeroGPU worker) gets fresh locks: one held by another thread at the
        # fork would stay held in the child for good. (A weak reference: no cache is kept alive.)
        ref = weakref.WeakMethod(self._new_locks)
        os.register_at_fork(after_in_child=lambda: (m := ref()) is not None and m())

    def _new_locks(self) -> None:
        self._lock = threading.Lock()
        self._load_lock = threading.Lock()
        # The vision passes run one at a time (they use every core); text encoding runs beside
        # them, so a request with many new prompts never holds up another visitor's Run.
        self.image_lane = threading.Lock()

    def place_on(self, device: str) -> None:
        """Keep every model on ``device`` from now on (those loaded move now)."""
        with self._lock:
            self.device = device
            for entry in self._models.values():
                self._place(entry.clip)

    def _place(self, clip: ClipModel) -> ClipModel:
        """``clip`` in the cache's precision on its device (anything else, e.g. a test's
        stand-in, as it is)."""
        if not isinstance(clip, ClipModel):
            return clip
        clip = cast(clip, self.precision)
        if clip.device.type != self.device:
            clip.model.to(self.device)
        return clip

    def peek(self, name: str) -> LoadedModel | None:
        with self._lock:
            return self._models.get(name)

    def is_loading(self, name: str) -> bool:
        with self._lock:
            return name in self._loading

    def loaded(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
        with self._load_lock:
            with self._lock:
                if name in self._models:  # loaded while we waited
                    self._models.move_to_end(name)
                    return self._models[name]
                self._loading.add(name)
            try:
                entry = self._load(name)
            finally:
                with self._lock:
                    self._loading.discard(name)
            with self._lock:
                self._models[name] = entry
                while len(self._models) > self.max_models:
                    self._models.popitem(last=False)
            return entry

    def preload(self, name: str) -> threading.Thread:
        """Start loading ``name`` in a background thread (errors are left for ``get``)."""

        def work() -> None:
            try:
                self.get(name)
            except Exception:  # noqa: BLE001 - reported again on first use
                pass

        t = threading.Thread(target=work, name=f"preload-{name}", daemon=True)
        t.start()
        return t

    def _load(self, name: str) -> LoadedModel:
        checkpoint = (
            self.checkpoint if (self.checkpoint and name == self.checkpoint_model) else None
        )
        # visitors see the checkpoint's file name only, never its server path
        shown = Path(checkpoint).name if checkpoint else None
        requested = f"checkpoint {shown}" if checkpoint else self.pretrained
        if name not in open_clip.list_models():
            raise InputError(f"unknown model {name!r}")
        note = None
        if (
            checkpoint is None
            and self.pretrained is not None
            and self.pretrained not in open_clip.list_pretrained_tags_by_model(name)
        ):
            note = (
                f"{name} has no pretrained weights tagged {self.pretrained!r}, so it runs "
                f"on random weights. {WEIGHTS_HELP}"
            )
            clip = self._loader(name, None, seed=self.seed)
        else:
            try:
                clip = self._loader(name, self.pretrained, checkpoint, seed=self.seed)
            except WeightsUnavailableError as exc:
                note = str(exc).replace(str(checkpoint), shown or "") if checkpoint else str(exc)
                note = without_dirs(note)
                clip = self._loader(name, None, seed=self.seed)
            else:
                if checkpoint and isinstance(clip, ClipModel):
                    clip = dataclasses.replace(clip, pretrained=requested)
        return LoadedModel(self._place(clip), requested, note)


# The concurrency group of every event that runs the model (Run, Compare, sweep, stream demo):
# its slots are the server's model slots, and a visitor holds at most one of them.
MODEL_LANE = "model"

BUSY = (
    "one request at a time per visitor: your previous Run, Compare, sweep or stream demo (from "
    "this page or another one at your address) is still running; try again when it has finished"
)


def visitor_keys(session: str | None, address: str | None) -> tuple[str, ...]:
    """What one model request counts against: its session and its client address (see
    :func:`tca.app.limits.client_key`), so neither a new session hash nor a second tab buys a
    second slot. None / empty parts are left out."""
    keys = []
    if session:
        keys.append(f"session {session}")
    if address:
        keys.append(f"address {address}")
    return tuple(keys)


class SessionGate:
    """At most one model request running per visitor: a request is refused at once
    (:data:`BUSY`) while another one holding any of its keys (its session, its client address:
    :func:`visitor_keys`) runs, so one visitor never holds more than one of the server's model
    slots however many requests, sessions or tabs they use. Thread-safe."""

    def __init__(self) -> None:
        self._active: set[str] = set()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._active)

    def busy(self, *keys: str | None) -> bool:
        """Whether a request holding any of ``keys`` is running."""
        with self._lock:
            return bool({k for k in keys if k} & self._active)

    @contextlib.contextmanager
    def hold(self, *keys: str | None) -> Iterator[None]:
        """Hold every key in ``keys`` (None entries are ignored; none at all: a direct call from
        tests or tools, nothing to bound) for the duration of the block."""
        held = {k for k in keys if k}
        with self._lock:
            if held & self._active:
                raise InputError(BUSY)
            self._active |= held
        try:
            yield
        finally:
            with self._lock:
                self._active -= held


__all__ = ["BUSY", "MODEL_LANE", "LoadedModel", "ModelCache", "SessionGate", "visitor_keys"]
