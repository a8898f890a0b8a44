"""The app's event handlers (``app.py`` wires them to its components): each builds the one
:class:`tca.request.Request` from the controls it is given, or reads the Run on screen, and
answers with the page's updates from :func:`tca.app.page.updates` keyed by component. Plus the
Gradio glue every handler shares: user errors as ``gr.Error`` with a scrubbed message and the
upload-only image input.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import html
import inspect
import json
import logging
import math
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Mapping, TypeVar

import gradio as gr
import numpy as np
from gradio.exceptions import InvalidPathError
from PIL import Image

from tca import stream_demo as tca_stream_demo
from tca.config import CondenseConfig, default_layers, format_layers
from tca.errors import ImageError, InputError, UserError, without_dirs
from tca.flops import Geometry
from tca.images import load_image
from tca.methods import METHODS
from tca.models import DEFAULT_MODEL
from tca.render import VIEWS
from tca.request import image_key

from . import device, export, limits, page, panels, runs, serving, sweeps, uploads
from .page import LAYER_PARTS, RUN_PARTS, Display, Screen
from .request import DEFAULT_CONFIG, Request, config_from_controls, from_controls, request_or_none
from .runs import (
    ALL_METHODS,
    APP_MODELS,
    Comparison,
    ExplorerRun,
    Matching,
    StreamState,
    compare,
    run,
    seen_picture,
)
from .shown import PAUSE_LABEL, PLAY_LABEL, OnScreen, play_start, play_step

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "assets"
TOP_K = 5
# Gradio recognises a progress parameter by its default (one instance serves every handler).
PROGRESS = gr.Progress()
# Runs of the curated examples kept for every visitor (gr.Cache, least recently used go): an
# example clicked again, with the same settings, shows at once without a model pass.
EXAMPLE_RUNS = 32

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("tca.app.events")


class Refused(gr.Error):
    """A refused event: shown as a toast, logged as one line (by :func:`refusal`), no
    traceback."""


def refusal(where: str, message: str, title: str = "Cannot run") -> Refused:
    """The error that refuses an event, its one log line written: "refused <where>: <message>".
    Gradio 6 titles every error toast "Error": the words that say what happened go into the
    message itself."""
    log.warning("refused %s: %s", where, " ".join(message.split())[:300])
    return Refused(f"Cannot run: {message}", title=title, print_exception=False)


def user_message(exc: BaseException) -> str:
    """The exception's message for the user: server paths cut to the file name, HTML special
    characters escaped (gr.Error renders HTML)."""
    return html.escape(without_dirs(str(exc)), quote=False)


def user_errors(fn: F) -> F:
    """Turn the package's user errors into gr.Error with the same (scrubbed) message."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            raise refusal(fn.__name__, user_message(exc)) from exc

    return wrapper  # type: ignore[return-value]


def checked_input(component: Any, field: str, valid: Callable[[Any], bool] | None = None) -> Any:
    """``component`` whose pre-processing refuses a value it cannot take (text where a number
    belongs, NaN for a whole number, a value not among the choices, or any payload ``valid``
    says no to) with one "Cannot run: <field>: ..." line instead of Gradio's traceback.
    Returns the component."""
    default = component.preprocess

    def preprocess(payload: Any) -> Any:
        if valid is not None and not valid(payload):
            raise refusal(field, f"{field}: not a valid value")
        try:
            return default(payload)
        except Refused:
            raise
        except gr.Error as exc:  # Gradio's own check (a range, the choices): its words, cut
            said = " ".join(str(getattr(exc, "message", exc)).split())
            raise refusal(field, f"{field}: {html.escape(said[:200], quote=False)}") from exc
        except Exception as exc:  # noqa: BLE001 - a value of the wrong kind from a client
            raise refusal(field, f"{field}: not a valid value") from exc

    component.preprocess = preprocess
    component.tca_checked = True
    return component


def check_every_input(demo: gr.Blocks) -> None:
    """:func:`checked_input` for every input of every event not checked yet (a control added
    later is covered too), named by its label."""
    for fn in demo.fns.values():
        for comp in fn.inputs:
            if getattr(comp, "tca_checked", False) or isinstance(comp, gr.State):
                continue
            name = getattr(comp, "label", None) or getattr(comp, "elem_id", None) or "an input"
            checked_input(comp, str(name)[:40])


def an_index(n: int) -> Callable[[Any], bool]:
    """A check for :func:`checked_input`: a whole number from 0 to n - 1 (an example's row)."""
    return lambda payload: (
        isinstance(payload, int) and not isinstance(payload, bool) and 0 <= payload < n
    )


def checked_payloads(demo: gr.Blocks) -> gr.Blocks:
    """Gradio validates file payloads (and moves files) before any component's
    ``preprocess``, and builds a select event's data before its handler runs: a payload of the
    wrong shape (a number where an image belongs, select data without an index) is refused
    there like every other bad input, one line and no traceback. Errors in the handlers
    themselves keep their tracebacks (they are bugs)."""
    default = demo.preprocess_data

    async def preprocess_data(block_fn: Any, inputs: list[Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return await default(block_fn, inputs, *args, **kwargs)
        except gr.Error:
            raise
        except InvalidPathError as exc:  # a file that is no upload: the one refusal
            raise refusal(getattr(block_fn, "name", None) or "event", uploads.REFUSED) from exc
        except Exception as exc:  # noqa: BLE001 - a client's malformed payload
            name = getattr(block_fn, "name", None) or "event"
            raise refusal(name, "an input is not in the form this event takes") from exc

    default_call = demo.call_function
    call_signature = inspect.signature(default_call)

    async def call_function(block_fn: Any, *args: Any, **kwargs: Any) -> Any:
        # a select event's data (SelectData needs "index" and "value") is built by Gradio
        # before the handler runs; a client's malformed one is refused here
        if getattr(block_fn, "collects_event_data", False):
            bound = call_signature.bind_partial(block_fn, *args, **kwargs).arguments
            raw = getattr(bound.get("event_data"), "_data", None)
            if not (isinstance(raw, dict) and "index" in raw and "value" in raw):
                name = getattr(block_fn, "name", None) or "event"
                raise refusal(name, "the event's data is missing or malformed")
        return await default_call(block_fn, *args, **kwargs)

    demo.preprocess_data = preprocess_data  # type: ignore[method-assign]
    demo.call_function = call_function  # type: ignore[method-assign]
    return demo


def image_input(policy: uploads.UploadPolicy, **kwargs: Any) -> gr.Image:
    """A ``gr.Image(type="filepath")`` whose every payload goes through ``policy``: only a file
    in Gradio's upload folder (or the curated examples) is passed on, unopened, so that the
    request's ``load_image`` checks it and the user sees its one-line message; any other path is
    refused with ``uploads.REFUSED`` and nothing is read. A ``data:`` URL is size-checked
    before it is decoded. Gradio's own rule already refuses a foreign path sent with file
    metadata before this runs. (Gradio 6.31 has no per-component pre-processing hook, so the
    instance's ``preprocess`` is wrapped; a subclass would make Gradio write a .pyi stub next to
    the module that defines it.)"""
    component = gr.Image(type="filepath", **kwargs)
    default = component.preprocess

    @user_errors
    def preprocess(payload: Any) -> str | None:
        if payload is None:
            return None
        url = getattr(payload, "url", None) or ""
        if url.startswith("data:"):
            uploads.check_data_url(url, policy.max_bytes)
            try:
                return str(policy.check(str(default(payload))))  # decoded into the upload folder
            except (ValueError, OSError) as exc:
                raise ImageError("image: the data URL is not a readable image") from exc
        path = getattr(payload, "path", None)
        return str(policy.check(path if isinstance(path, str) else None))

    component.preprocess = preprocess  # type: ignore[method-assign]
    # An http(s) URL (the API's and MCP's way to name a file) would be downloaded into the
    # upload folder before ``preprocess`` sees it: only one that names an upload of this app
    # (its file route) is taken, as that local file, and nothing is fetched; any other is
    # refused here, before Gradio downloads it.
    move = component.async_move_resource_to_block_cache

    async def only_uploads(url_or_file_path: Any) -> str | None:
        if isinstance(url_or_file_path, str) and uploads.is_url(url_or_file_path):
            try:
                local = uploads.served_path(url_or_file_path)
                url_or_file_path = str(policy.check(local))
            except UserError as exc:
                raise gr.Error(
                    f"Cannot run: {user_message(exc)}", title="Cannot run", print_exception=False
                ) from exc
        return await move(url_or_file_path)

    component.async_move_resource_to_block_cache = only_uploads  # type: ignore[method-assign]
    return component


def upload_policy(max_bytes: int = uploads.MAX_UPLOAD_BYTES) -> uploads.UploadPolicy:
    """Images are accepted from Gradio's upload folder (uploads, decoded data: URLs, the
    examples' cached copies) and the curated examples in assets/ only."""
    return uploads.UploadPolicy.of([gr.utils.get_upload_folder(), ASSETS], max_bytes)


def examples() -> list[list[str]]:
    """The curated examples: [image path, labels] each."""
    try:
        items = json.loads((ASSETS / "examples.json").read_text())
    except (OSError, ValueError):
        return []
    return [
        [str(ASSETS / e["image"]), e["labels"]] for e in items if (ASSETS / e["image"]).is_file()
    ]


def visitor(request: gr.Request | None, proxied: bool = False) -> tuple[str, ...]:
    """The gate keys of an event's visitor: its session hash and its client address (the first
    ``X-Forwarded-For`` hop behind a proxy, else the peer); none for a direct call."""
    if request is None:
        return ()
    try:
        headers = dict(request.headers or {})
        client = getattr(request, "client", None)
        host = getattr(client, "host", None)
    except Exception:  # noqa: BLE001 - a request without HTTP parts (e.g. a direct call)
        headers, host = {}, None
    address = limits.client_key(headers, host, proxied) if (headers or host) else None
    return serving.visitor_keys(getattr(request, "session_hash", None), address)


# The handlers that always hold the per-visitor gate (Compare's first opening holds it only to
# compute the shared first comparison once, and waits quietly when the visitor is busy).
GATED = ("classify", "compare", "sweep", "stream_demo")


def join_admission(
    demo: gr.Blocks,
    gate: serving.SessionGate,
    proxied: bool = False,
    lane: str = serving.MODEL_LANE,
) -> Callable[[Mapping[str, Any], str], str | None]:
    """The per-visitor rule applied when an event asks to join the queue (for
    :class:`tca.app.limits.EventInputs`): a model request (an event of the ``lane``
    concurrency group) from a visitor (session or client address) who already has one running
    or waiting is refused at once with :data:`serving.BUSY`, so a flood under invented session
    hashes never waits in the queue ahead of other visitors. The handlers' own gate stays the
    rule for whatever slips between the two checks. Reads Gradio 6's queue (its waiting
    events); without it only running requests count."""

    def admit(event: Mapping[str, Any], address: str) -> str | None:
        index = event.get("fn_index")
        fn = demo.fns.get(index) if isinstance(index, int) else None
        if fn is None or getattr(fn, "concurrency_id", None) != lane or fn.name not in GATED:
            return None
        session = event.get("session_hash") if isinstance(event.get("session_hash"), str) else None
        if gate.busy(*serving.visitor_keys(session, address)) or any(
            ev.session_hash == session or _address_of(ev, proxied) == address
            for ev in _lane_events(demo, lane)
        ):
            return f"Cannot run: {serving.BUSY}"
        return None

    return admit


def _lane_events(demo: gr.Blocks, lane: str) -> list[Any]:
    """The events of concurrency group ``lane`` waiting in Gradio's queue. (Running ones hold
    the gate; Gradio's list of running jobs also holds just-finished ones for a moment, which
    would refuse a visitor's next Run right after the last one.)"""
    queue = getattr(demo, "_queue", None)
    waiting = getattr(getattr(queue, "event_queue_per_concurrency_id", {}).get(lane), "queue", [])
    return [ev for ev in list(waiting) if getattr(ev, "concurrency_id", None) == lane]


def _address_of(event: Any, proxied: bool) -> str | None:
    request = getattr(event, "request", None)
    if request is None:
        return None
    client = getattr(request, "client", None)
    return limits.client_key(dict(request.headers), getattr(client, "host", None), proxied)


def _finite(value: Any) -> float | None:
    """A finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _display(
    run: ExplorerRun,
    layer: Any,
    view: Any,
    overlay: Any,
    opacity: Any,
    patch: Any,
) -> Display | None:
    """The display the controls ask for, clamped to the run; None when the depth or the
    opacity is no finite number or the view no known view (the event is then a silent no-op:
    the page itself never sends such values)."""
    depth, alpha = _finite(layer), _finite(opacity)
    if depth is None or alpha is None or not isinstance(view, str):
        return None
    if view not in VIEWS:
        return None
    followed = patch if isinstance(patch, int) and not isinstance(patch, bool) else None
    return Display(int(depth), view, overlay is True, min(max(alpha, 0.0), 1.0), followed).clamped(
        run.trace
    )


def _held(on_screen: OnScreen | None) -> Any:
    """The session's display lock (nothing to hold without an ``OnScreen``)."""
    return on_screen.lock if on_screen is not None else contextlib.nullcontext()


def _layer(on_screen: OnScreen | None, layer: Any) -> int | None:
    """The block last drawn for this session (the slider's value may be older); else the
    slider's value, None when it is no finite number."""
    if on_screen is not None and on_screen.layer is not None:
        return on_screen.layer
    at = _finite(layer)
    return int(at) if at is not None else None


def _patch(on_screen: OnScreen | None, patch: int | None) -> int | None:
    """The patch this session follows now (the value sent with the event may be older)."""
    return on_screen.patch if on_screen is not None else patch


def _remember(on_screen: OnScreen | None, d: Display) -> None:
    if on_screen is not None:
        on_screen.layer = d.layer
        on_screen.follow(d.patch)


def _png(folder: Path, arr: Any, name: str) -> str:
    path = folder / f"{name}.png"
    Image.fromarray(arr).save(path, compress_level=1)
    return str(path)


class App:
    """The event handlers, over one shared :class:`tca.app.serving.ModelCache`. Per-visitor
    state (the Run on screen, the stream reservoir, the followed patch) lives in ``gr.State``,
    never here; the only shared result is the first screen, the same for every visitor.
    ``ui``: the page's components by name, set by the layout (``app.build_demo``)."""

    def __init__(
        self,
        model_name: str = DEFAULT_MODEL,
        pretrained: str | None = "openai",
        checkpoint: str | None = None,
        max_models: int = 2,
        cache: serving.ModelCache | None = None,
        exports: export.ExportDir | None = None,
        placement: device.Placement | None = None,
    ) -> None:
        self.default_model = model_name
        # where the model passes run ($TCA_DEVICE) and in which precision ($TCA_PRECISION)
        self.placement = placement or device.placement_from_env()
        self.cache = cache or serving.ModelCache(
            pretrained,
            checkpoint,
            checkpoint_model=model_name,
            max_models=max_models,
            precision=self.placement.precision,
            device=self.placement.home,
        )
        # every model pass runs in a GPU task (spaces.GPU on ZeroGPU; a plain call elsewhere)
        on_gpu = functools.partial(device.gpu_task, prepare=self._in_worker)
        self._run = on_gpu(self._run_passes, device.GPU_SECONDS["run"])
        self._compare = on_gpu(self._compare_passes, device.GPU_SECONDS["compare"])
        self._sweep = on_gpu(self._sweep_passes, device.GPU_SECONDS["sweep"])
        self._stream_demo = on_gpu(self._stream_demo_passes, device.GPU_SECONDS["stream_demo"])
        self.exports = exports or export.ExportDir()
        self.gate = serving.SessionGate()  # one model request per visitor at a time
        self.behind_proxy = limits.behind_proxy()  # whose address X-Forwarded-For names
        self.model_choices = list(APP_MODELS.items())
        if model_name not in APP_MODELS.values():
            self.model_choices.insert(0, (model_name, model_name))
        self.example_runs = gr.Cache(max_size=EXAMPLE_RUNS)
        self._example_keys: frozenset[str] | None = None
        self.ui: Mapping[str, Any] = {}
        self._first: ExplorerRun | None = None
        self._first_parts: dict[str, Any] | None = None  # with picture files
        self._first_cmp: Comparison | None = None
        self._cmp_lock = threading.Lock()  # its own: page loads never wait for the comparison
        self._first_lock = threading.RLock()

    def nothing(self, name: str) -> dict[Any, Any]:
        """An event's answer that changes nothing on the page: the component ``name`` (one of
        the event's outputs) skipped. (An empty dict is no answer to Gradio: it takes it for
        the value of the first output.)"""
        return {self.ui[name]: gr.skip()} if name in self.ui else {}

    # -- the model passes (GPU tasks: their arguments pickle on ZeroGPU, so progress callbacks
    # are only passed where no worker process stands between)
    def _in_worker(self) -> None:
        """First in every GPU task (on ZeroGPU, a worker forked from the server): one CPU
        thread there, and the models on the device (a worker moves its own copies)."""
        device.in_worker(self.placement)
        self.cache.place_on(self.placement.device)

    def _say(self, progress: gr.Progress, model: str) -> runs.Say | None:
        """The progress callback for a GPU task on ``model``. On ZeroGPU there is none, and the
        model is loaded here first, on the CPU, so that the worker forked for the task
        inherits it instead of loading a copy of its own."""
        if not self.placement.zero_gpu:
            return lambda f, d: progress(f, desc=d)
        progress(0.1, desc="loading the model")
        self.cache.get(model)
        return None

    def _run_passes(
        self, req: Request, stream_state: StreamState | None, say: runs.Say | None = None
    ) -> tuple[ExplorerRun, StreamState | None]:
        # the stream state comes back: a ZeroGPU worker updates its own copy of it
        return run(self.cache, req, stream=stream_state, progress=say), stream_state

    def _compare_passes(
        self, req: Request, matching: Matching, say: runs.Say | None = None
    ) -> Comparison:
        return compare(self.cache, req, progress=say, matching=matching)

    def _sweep_passes(
        self,
        req: Request,
        methods: Any,
        shown: ExplorerRun | None,
        by: str,
        say: runs.Say | None = None,
    ) -> sweeps.Sweep:
        return sweeps.sweep(self.cache, req, methods, reuse=shown, progress=say, by=by)

    def _stream_demo_passes(self, model: str, keep_rate: float) -> tuple[Any, np.ndarray]:
        loaded = self.cache.get(model)
        cfg = CondenseConfig(method="tca", keep_rate=float(keep_rate))
        demo = tca_stream_demo.run(loaded.clip, tca_stream_demo.load_spec(), cfg)
        probe = Image.open(tca_stream_demo.load_spec().probe).convert("RGB")
        return demo, seen_picture(loaded.clip, probe)

    def _example_run(self, req: Request, say: runs.Say | None) -> ExplorerRun:
        """The Run of a curated example's image (cached: Gradio's ``gr.Cache``, keyed by the
        image's content and every setting), else a fresh Run. Each visitor gets a copy (a Run
        on screen may be changed, e.g. by the stream reset)."""
        if self._example_keys is None:
            self._example_keys = frozenset(image_key(p, load_image(p)) for p, _ in examples())
        if req.image_key not in self._example_keys:
            return self._run(req, None, say)[0]
        key = (req.image_key, req.labels, req.model, req.templates, req.config)
        hit = self.example_runs.get(key)
        if hit is None:
            shown = self._run(req, None, say)[0]
            self.example_runs.set(key, run=copy.deepcopy(shown))
            return shown
        return copy.deepcopy(hit["run"])

    def request(
        self,
        image: Any,
        labels: Any,
        model: str | None,
        method: str,
        keep_rate: float,
        layers: str,
        merge_centers: float,
        score: str,
        templates: str,
    ) -> Request:
        """The one request of an event, from the page's (or the API's) controls."""
        return from_controls(
            image,
            labels,
            model or self.default_model,
            method,
            keep_rate,
            layers,
            merge_centers,
            score,
            templates,
        )

    @user_errors
    def check_inputs(self, *controls: Any) -> None:
        """The page's Run first checks the request alone (no outputs): a mistake is one toast
        and no panel changes, so the last complete run stays on screen, marked Outdated."""
        self.request(*controls)

    # -- the first screen
    def first_screen(self) -> ExplorerRun | None:
        """The first curated example at the default settings, run once and kept (None without
        examples or when it cannot run)."""
        with self._first_lock:
            if self._first is None:
                items = examples()
                if not items:
                    return None
                image, labels = items[0]
                c = DEFAULT_CONFIG
                try:
                    req = self.request(
                        image,
                        labels,
                        None,
                        c.method,
                        c.keep_rate,
                        ",".join(map(str, c.layers)),
                        c.merge_centers,
                        c.score,
                        "single",
                    )
                    # in the server process, outside any GPU task (on ZeroGPU: on the CPU)
                    self._first = device.to_cpu(run(self.cache, req))
                except Exception as exc:  # noqa: BLE001 - the page then opens empty, still serving
                    print(f"TCA Explorer: no first screen ({type(exc).__name__}: {exc})")
                    return None
            return self._first

    def first_parts(self) -> dict[str, Any] | None:
        """The first screen's page parts (in memory: it is built into the page)."""
        first = self.first_screen()
        if first is None:
            return None
        return page.parts(
            first,
            Display(first.trace.depth - 1),
            RUN_PARTS,
            Screen(banner=self.banner_html(first.model), startup=True),
        )

    def load_first(self, shown: ExplorerRun | None) -> dict[Any, Any]:
        """Page load (first screen computed in the background): the first example, its Run and
        everything the page shows for it, in one event. The parts are built and their pictures
        written once per process, so every later visitor only fetches files."""
        if shown is not None:
            return self.nothing("banner")
        first = self.first_screen()  # waits while the background thread computes it
        items = examples()
        if first is None or not items:
            return self.nothing("banner")
        with self._first_lock:
            if self._first_parts is None:
                got = self.first_parts()
                assert got is not None
                folder = Path(tempfile.mkdtemp(prefix="tca-first-screen-"))
                got["map"]["value"] = _png(folder, got["map"]["value"], "map")
                got["chart"]["value"] = _png(folder, got["chart"]["value"], "chart")
                got["strip"]["value"] = [
                    (_png(folder, t, f"block{i}"), c)
                    for i, (t, c) in enumerate(got["strip"]["value"])
                ]
                self._first_parts = got
            got = self._first_parts
        out: dict[Any, Any] = {self.ui[n]: u for n, u in got.items()}
        out[self.ui["image"]] = items[0][0]
        out[self.ui["labels"]] = items[0][1]
        out[self.ui["run"]] = copy.deepcopy(first)
        return out

    # -- events that run the model
    @user_errors
    def classify(
        self,
        image: Any,
        labels: str,
        model: str,
        method: str,
        keep_rate: float,
        layers: str,
        merge_centers: float,
        score: str,
        templates: str,
        stream: bool,
        stream_state: StreamState | None,
        progress: gr.Progress = PROGRESS,
        request: gr.Request | None = None,
    ) -> tuple[dict, ExplorerRun, StreamState | None]:
        """Zero-shot classification of one image by baseline CLIP and condensed CLIP.

        Args:
            image: the image: an uploaded file (gradio_client.handle_file, the upload tool over MCP) or a data: URL of at most 10 MB; server paths and other URLs are refused.
            labels: candidate labels, comma-separated or one per line (2 to 100), e.g. "cat, dog, car".
            model: open_clip model name, e.g. ViT-B-16-quickgelu (the page's Model list).
            method: condensation method: tca (the paper's), evit, tome, ats, ... or none (plain CLIP).
            keep_rate: keep rate R between 0.1 and 1.0: the share of tokens each condensing block keeps.
            layers: condensing blocks, 0-based and comma-separated, e.g. "3,6,9".
            merge_centers: TCA's merge centres K, a whole number from 1 to 16.
            score: TCA's token score: mean (head-mean CLS attention) or rank (cross-head rank).
            templates: prompt templates: single ("a photo of a {}."), imagenet80, or a data set's name from the paper.
            stream: stream mode (TCA's reservoir and logits correction, kept per session).

        Returns:
            one JSON object: labels, baseline / condensed (and, in stream mode, corrected) probabilities and top-5, per-label probability shift, tokens per layer (baseline and condensed), GMACs (baseline, condensed, % saved, convention), timings, settings, precision, and whether the weights are random.
        """
        req = self.request(
            image, labels, model, method, keep_rate, layers, merge_centers, score, templates
        )
        if stream and stream_state is None:
            stream_state = StreamState()
        with self.gate.hold(*visitor(request, self.behind_proxy)):
            if stream:
                shown, stream_state = self._run(req, stream_state, self._say(progress, req.model))
            else:
                shown = self._example_run(req, self._say(progress, req.model))
        progress(0.95, desc="drawing")
        return export.summary(shown, TOP_K), shown, stream_state

    def matching(self, match_by: str | None, target_gmacs: float | None) -> Matching:
        """Compare's matching from its controls (ConfigError naming the field)."""
        by = match_by or "tca"
        return Matching(by, float(target_gmacs) if by == "gmacs" and target_gmacs else None)

    @user_errors
    def compare(
        self,
        image: Any,
        labels: str,
        model: str,
        method: str,
        keep_rate: float,
        layers: str,
        merge_centers: float,
        score: str,
        templates: str,
        match_by: str = "tca",
        target_gmacs: float | None = None,
        method_a: str = "tca",
        method_b: str = "evit",
        progress: gr.Progress = PROGRESS,
        request: gr.Request | None = None,
    ) -> dict[Any, Any]:
        """Every condensing method on the request's image and blocks, at its keep rate or at
        equal GMACs (``match_by``: rate, tca or gmacs, with ``target_gmacs``)."""
        req = self.request(
            image, labels, model, method, keep_rate, layers, merge_centers, score, templates
        )
        matching = self.matching(match_by, target_gmacs)
        with self.gate.hold(*visitor(request, self.behind_proxy)):
            cmp = self._compare(req, matching, self._say(progress, req.model))
        return self.compare_parts(cmp, method_a, method_b, "")

    def compare_parts(
        self, cmp: Comparison, method_a: str | None, method_b: str | None, stale: str
    ) -> dict[Any, Any]:
        """Everything the Compare tab shows of one comparison."""
        out: dict[Any, Any] = {
            self.ui["compare_state"]: cmp,
            self.ui["compare_stale"]: stale,
            self.ui["compare_picture"]: page.compare_picture(cmp),
            self.ui["compare_baseline"]: cmp.baseline.as_dict(),
            self.ui["compare_table"]: panels.compare_html(cmp),
            self.ui["banner"]: self.banner_html(cmp.model),
        }
        if cmp.target is not None and cmp.matching.by != "gmacs":
            # TCA's cost as the starting point for a target of one's own
            out[self.ui["compare_target"]] = round(cmp.target, 3)
        out.update(self.compare_disagree(cmp, method_a or "tca", method_b or "evit"))
        return out

    def compare_disagree(self, cmp: Comparison | None, a: str, b: str) -> dict[Any, Any]:
        """The disagreement map and counts of methods ``a`` and ``b`` (no model)."""
        picture, counts = self.ui["compare_disagree_picture"], self.ui["compare_disagree"]
        if cmp is None or not isinstance(a, str) or not isinstance(b, str):
            return self.nothing("compare_disagree")
        d = page.disagreement_of(cmp, a, b)
        if d is None:
            missing = [METHODS[m].title for m in (a, b) if m not in cmp.results]
            return {
                picture: None,
                counts: f"<i>{', '.join(missing)} did not run in this comparison.</i>",
            }
        return {
            picture: page.disagreement_picture(cmp, d),
            counts: panels.disagreement_html(d),
        }

    def check_compare_stale(self, cmp: Comparison | None, *controls: Any) -> str:
        """Mark the comparison outdated when the Explore controls (or Compare's matching) no
        longer make it. controls: the Explore controls, then match_by and target_gmacs."""
        *explore, match_by, target = controls
        req = request_or_none(*explore[:2], explore[2] or self.default_model, *explore[3:])
        try:
            matching: Matching | None = self.matching(match_by, target)
        except UserError:
            matching = None
        return panels.compare_stale_html(cmp, req, matching)

    def first_comparison(self) -> Comparison | None:
        """The first screen's request compared at equal GMACs (TCA's cost at its R), computed
        once per process on the first opening of the Compare tab and served to everyone."""
        with self._cmp_lock:
            if self._first_cmp is None:
                first = self.first_screen()
                if first is None:
                    return None
                try:
                    self._first_cmp = device.to_cpu(
                        compare(self.cache, first.request, matching=Matching("tca"))
                    )
                except Exception as exc:  # noqa: BLE001 - the tab then waits for Compare
                    print(f"TCA Explorer: no first comparison ({type(exc).__name__}: {exc})")
                    return None
            return self._first_cmp

    def open_compare(
        self, cmp: Comparison | None, *controls: Any, request: gr.Request | None = None
    ) -> dict[Any, Any]:
        """Opening the Compare tab with nothing compared yet shows the first example's
        comparison (marked Outdated where the visitor's inputs differ)."""
        if cmp is not None:
            return self.nothing("compare_picture")
        *_, method_a, method_b = controls
        first = self._first_cmp
        if first is None:  # the first opening since start-up computes it
            try:
                with self.gate.hold(*visitor(request, self.behind_proxy)):
                    first = self.first_comparison()
            except UserError:  # this visitor's Run is still going: the tab waits for Compare
                return self.nothing("compare_picture")
        if first is None:
            return self.nothing("compare_picture")
        stale = self.check_compare_stale(first, *controls[:-2])
        return self.compare_parts(first, method_a, method_b, stale)

    @user_errors
    def sweep(
        self,
        image: Any,
        labels: str,
        model: str,
        method: str,
        keep_rate: float,
        layers: str,
        merge_centers: float,
        score: str,
        templates: str,
        all_methods: bool = False,
        shown: ExplorerRun | None = None,
        by: str = "rate",
        progress: gr.Progress = PROGRESS,
        request: gr.Request | None = None,
    ) -> dict[Any, Any]:
        """The sweep of the current image: one job, plot + table; ``by``: keep rate or equal
        GMACs. The shown Run's baseline is reused when it was made from the same image, labels,
        model and prompts."""
        req = self.request(
            image, labels, model, method, keep_rate, layers, merge_centers, score, templates
        )
        with self.gate.hold(*visitor(request, self.behind_proxy)):
            sw = self._sweep(
                req,
                ALL_METHODS if all_methods else None,
                shown,
                by or "rate",
                self._say(progress, req.model),
            )
        return {
            self.ui["sweep_plot"]: page.sweep_image(sw),
            self.ui["sweep_table"]: panels.sweep_html(sw),
        }

    # -- display-only events (no model)
    def show_run(
        self,
        shown: ExplorerRun | None,
        layer: float,
        view: str,
        overlay: bool,
        opacity: float,
        patch: int | None,
        shown_depth: int | None,
        stream_on: bool,
        stream_state: StreamState | None,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """Everything a new Run changes. A run with another depth than the one shown (e.g.
        ViT-L/14 after ViT-B/16) opens at its last block."""
        if shown is None:
            return self.nothing("map")
        with _held(on_screen):
            if on_screen is not None:
                layer = on_screen.layer if on_screen.layer is not None else layer
                patch = on_screen.patch
            if shown_depth != shown.trace.depth or _finite(layer) is None:
                layer = shown.trace.depth - 1
            d = _display(shown, layer, view, overlay, opacity, patch) or Display(
                shown.trace.depth - 1
            ).clamped(shown.trace)
            _remember(on_screen, d)
            screen = Screen(self.banner_html(shown.model), bool(stream_on), stream_state)
            return page.updates(self.ui, shown, d, RUN_PARTS, screen)

    def show_layer(
        self,
        shown: ExplorerRun | None,
        layer: float,
        view: str = "fates",
        overlay: bool = False,
        opacity: float = 0.5,
        patch: int | None = None,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """Map, info, chart and follow table at ``layer``; the strip's selected tile moves."""
        if shown is None:
            return self.nothing("info")
        with _held(on_screen):
            d = _display(shown, layer, view, overlay, opacity, _patch(on_screen, patch))
            if d is None:
                return self.nothing("info")
            _remember(on_screen, d)
            return page.updates(
                self.ui, shown, d, (*LAYER_PARTS, "strip"), Screen(redraw_strip=False)
            )

    def step_layer(
        self,
        shown: ExplorerRun | None,
        layer: float,
        delta: int,
        view: str,
        overlay: bool,
        opacity: float,
        patch: int | None,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """◀ / ▶: one block back or on (clamped), from the block last shown."""
        if shown is None:
            return self.nothing("info")
        with _held(on_screen):
            at = _layer(on_screen, layer)
            d = _display(
                shown,
                at + delta if at is not None else None,
                view,
                overlay,
                opacity,
                _patch(on_screen, patch),
            )
            if d is None:
                return self.nothing("info")
            _remember(on_screen, d)
            return page.updates(
                self.ui, shown, d, ("layer", *LAYER_PARTS, "strip"), Screen(redraw_strip=False)
            )

    def pick_layer(
        self,
        shown: ExplorerRun | None,
        view: str,
        overlay: bool,
        opacity: float,
        patch: int | None,
        evt: gr.SelectData,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """A click on a strip tile selects that block (the strip itself is not redrawn)."""
        if shown is None or evt is None or not isinstance(evt.index, int):
            return self.nothing("info")
        if not 0 <= evt.index < shown.trace.depth:
            return self.nothing("info")
        with _held(on_screen):
            d = _display(shown, evt.index, view, overlay, opacity, _patch(on_screen, patch))
            if d is None:
                return self.nothing("info")
            _remember(on_screen, d)
            return page.updates(self.ui, shown, d, ("layer", *LAYER_PARTS))

    def pick_patch(
        self,
        shown: ExplorerRun | None,
        layer: float,
        view: str,
        overlay: bool,
        opacity: float,
        evt: gr.SelectData,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """A click on the big map follows that patch through every block."""
        if shown is None or evt is None or not isinstance(evt.index, (list, tuple)):
            return self.nothing("why")
        xy = [_finite(v) for v in evt.index[:2]]
        if len(xy) != 2 or xy[0] is None or xy[1] is None:
            return self.nothing("why")
        patch = page.patch_at(shown, xy[0], xy[1])
        if patch is None:
            return self.nothing("why")
        with _held(on_screen):
            d = _display(shown, _layer(on_screen, layer), view, overlay, opacity, patch)
            if d is None:
                return self.nothing("why")
            _remember(on_screen, d)
            return page.updates(self.ui, shown, d, page.FOLLOW_PARTS)

    def clear_patch(
        self,
        shown: ExplorerRun | None,
        layer: float,
        view: str,
        overlay: bool,
        opacity: float,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """Stop following: the block last shown (a strip tile's answer may have moved it since
        this click was sent), without the followed patch."""
        with _held(on_screen):
            if on_screen is not None:
                on_screen.follow(None)
            if shown is None:
                return {self.ui["patch"]: None}
            d = _display(shown, _layer(on_screen, layer), view, overlay, opacity, None)
            if d is None:
                return {self.ui["patch"]: None}
            _remember(on_screen, d)
            return page.updates(self.ui, shown, d, page.FOLLOW_PARTS)

    # -- ▶ play through the blocks (a gr.Timer ticks play_tick while playing)
    def _playing(self, on: bool) -> dict[Any, Any]:
        """The timer and the button while playing (``on``) or stopped."""
        return {
            self.ui["play_timer"]: gr.update(active=on),
            self.ui["play"]: gr.update(value=PAUSE_LABEL if on else PLAY_LABEL),
        }

    def _play_frame(
        self,
        shown: ExplorerRun,
        layer: int | None,
        view: str,
        overlay: bool,
        opacity: float,
        on_screen: OnScreen | None,
        patch: int | None,
    ) -> dict[Any, Any] | None:
        """Block ``layer`` drawn for play (map, strip highlight, chart marker and follow table
        in one answer) and remembered as on screen; None when it cannot be drawn."""
        d = _display(shown, layer, view, overlay, opacity, _patch(on_screen, patch))
        if d is None:
            return None
        _remember(on_screen, d)
        return page.updates(
            self.ui, shown, d, ("layer", *LAYER_PARTS, "strip"), Screen(redraw_strip=False)
        )

    def toggle_play(
        self,
        shown: ExplorerRun | None,
        label: str,
        layer: float,
        view: str,
        overlay: bool,
        opacity: float,
        patch: int | None,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """▶ Play starts the timer (from block 0 when the last block is shown); ⏸ Pause stops
        it where it is."""
        if shown is None or label == PAUSE_LABEL:
            return self._playing(False)
        with _held(on_screen):
            at = _layer(on_screen, layer)
            start = play_start(at, shown.trace.depth) if at is not None else None
            out = self._play_frame(shown, start, view, overlay, opacity, on_screen, patch)
        if out is None:
            return self._playing(False)
        return {**out, **self._playing(True)}

    def play_tick(
        self,
        shown: ExplorerRun | None,
        layer: float,
        view: str,
        overlay: bool,
        opacity: float,
        patch: int | None,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """One tick: the next block (map, strip highlight, chart marker and follow table move
        together); on the last block the timer stops and the button says ▶ Play again."""
        if shown is None:
            return self._playing(False)
        with _held(on_screen):
            at = _layer(on_screen, layer)
            if at is None:
                return self._playing(False)
            nxt, more = play_step(at, shown.trace.depth)
            out = self._play_frame(shown, nxt, view, overlay, opacity, on_screen, patch)
        if out is None:
            return self._playing(False)
        return out if more else {**out, **self._playing(False)}

    def change_view(
        self,
        shown: ExplorerRun | None,
        layer: float,
        view: str,
        overlay: bool,
        opacity: float,
        patch: int | None,
        on_screen: OnScreen | None = None,
    ) -> dict[Any, Any]:
        """Fates / what the model sees / score: the map, the strip and the block info (the
        score's colour bar) are redrawn (no model)."""
        if shown is None:
            return self.nothing("map")
        with _held(on_screen):
            d = _display(
                shown, _layer(on_screen, layer), view, overlay, opacity, _patch(on_screen, patch)
            )
            if d is None:
                return self.nothing("map")
            return page.updates(self.ui, shown, d, ("map", "strip", "info"))

    def export(
        self, shown: ExplorerRun | None, layer: float, view: str, patch: int | None
    ) -> dict[Any, Any]:
        """Write the downloads on request: strip PNG, depth GIF, whole-run JSON."""
        if shown is None:
            raise refusal("export", "Run first: there is nothing to export yet.", title="Export")
        d = _display(shown, layer, view, False, 0.5, patch)
        if d is None:
            return self.nothing("json_file")
        files = page.exports(shown, d, self.exports)
        return {
            self.ui["strip_file"]: files["png"],
            self.ui["gif_file"]: files["gif"],
            self.ui["json_file"]: files["json"],
        }

    def check_stale(
        self,
        shown: ExplorerRun | None,
        image: Any,
        labels: str,
        model: str,
        method: str,
        keep_rate: float,
        layers: str,
        merge_centers: float,
        score: str,
        templates: str,
    ) -> str:
        """Mark the shown results outdated when the controls no longer make their request."""
        req = request_or_none(
            image,
            labels,
            model or self.default_model,
            method,
            keep_rate,
            layers,
            merge_centers,
            score,
            templates,
        )
        return panels.stale_html(shown, req)

    def check_image(self, image: Any) -> Any:
        """Right after an upload: a file that is not a readable image is refused at once."""
        if image is None:
            return gr.skip()
        try:
            load_image(image)
        except UserError as exc:
            log.warning("refused check_image: %s", " ".join(user_message(exc).split())[:300])
            gr.Warning(f"Image: {user_message(exc)}", title="Image not usable")
            return None
        return gr.skip()

    def reset_stream(
        self, stream_state: StreamState | None, shown: ExplorerRun | None, stream_on: bool = True
    ) -> dict[Any, Any]:
        if stream_state is None:
            stream_state = StreamState()
        stream_state.reset()
        if shown is not None:
            shown.stream = None
        return {
            self.ui["stream_state"]: stream_state,
            self.ui["stream"]: panels.stream_html(None, stream_state, stream_on is True),
            self.ui["corrected"]: gr.update(value=None, visible=False),
        }

    def stream_toggled(
        self, on: bool, shown: ExplorerRun | None, stream_state: StreamState | None
    ) -> str:
        on = on is True
        return panels.stream_html(shown if on else None, stream_state, on)

    def banner_html(self, model: str) -> str:
        return panels.banner_html(
            self.cache.peek(model), model, loading=self.cache.is_loading(model)
        )

    @user_errors
    def stream_demo(
        self,
        model: str,
        keep_rate: float,
        progress: gr.Progress = PROGRESS,
        request: gr.Request | None = None,
    ) -> dict[Any, Any]:
        """The one-click stream demo: the bundled sequence into a fresh reservoir (never the
        session's) until the anchors switch on, then the probe with and without them."""
        cfg = config_from_controls(
            "tca", keep_rate, DEFAULT_CONFIG.layers, DEFAULT_CONFIG.merge_centers, "mean"
        )
        cfg = CondenseConfig(method="tca", keep_rate=cfg.keep_rate)
        if model is not None and not isinstance(model, str):
            raise InputError("model must be a model name")
        progress(0.05, desc="loading the model")
        with self.gate.hold(*visitor(request, self.behind_proxy)):
            self.cache.get(model or self.default_model)  # loaded here, on the CPU
            progress(0.2, desc="feeding the bundled stream")
            demo, seen = self._stream_demo(model or self.default_model, float(keep_rate))
        progress(0.95, desc="drawing")
        return {
            self.ui["demo_text"]: panels.stream_demo_html(demo),
            self.ui["demo_picture"]: gr.update(
                value=page.stream_demo_picture(demo, seen), visible=True
            ),
        }

    def model_layers(self, model: str) -> dict[str, Any]:
        """A new model gets its default condensing blocks (``tca.config.default_layers``:
        depth/4 x 1, 2, 3), written in the field's label too."""
        if not isinstance(model, str):
            return gr.update()
        try:
            depth = Geometry.from_name(model).depth
        except Exception:  # noqa: BLE001 - an unknown model is reported by the Run
            return gr.update()
        blocks = format_layers(default_layers(depth))
        return gr.update(
            value=blocks,
            label=f"Condensing blocks (0-based; default for {depth} blocks: {blocks})",
        )

    def banner(self, model: str | None = None) -> str:
        model = model if isinstance(model, str) and model else self.default_model
        loaded = self.cache.peek(model)
        if loaded is None and model == self.default_model:
            try:  # the first page view waits for the (background) load of the default model
                loaded = self.cache.get(model)
            except Exception:  # noqa: BLE001 - shown again, with its message, on Run
                loaded = None
        return panels.banner_html(loaded, model, loading=self.cache.is_loading(model))


__all__ = [
    "App",
    "Refused",
    "checked_input",
    "checked_payloads",
    "check_every_input",
    "an_index",
    "examples",
    "image_input",
    "join_admission",
    "refusal",
    "upload_policy",
    "user_errors",
    "user_message",
    "visitor",
]
