"""The app's one request: its controls (the page's or the API's loose values) turned into a
validated :class:`tca.request.Request`, once per event, with the app's limits and messages
naming the control; and the one home of the settings the page opens with.
"""

from __future__ import annotations

from typing import Sequence

from tca.config import DEFAULT_LAYERS, DEFAULT_LAYERS_TEXT, CondenseConfig, parse_layers
from tca.errors import ConfigError, InputError, LabelError, UserError
from tca.methods import METHODS
from tca.models import DEFAULT_MODEL
from tca.prompts import TEMPLATES
from tca.request import Request

# The settings the page opens with, the API's defaults and the first screen's: one home.
DEFAULT_CONFIG = CondenseConfig(
    method="tca", keep_rate=0.7, layers=DEFAULT_LAYERS, merge_centers=2, score="mean"
)

MAX_LABELS = 100
# Prompts one request may encode (labels x templates): 15 labels with the 80 ImageNet prompts,
# or every one of MAX_LABELS with one prompt. Encoding them takes a few seconds here (README).
MAX_PROMPTS = 1200
MAX_LABELS_TEXT = 20_000  # characters of label text accepted before parsing
KEEP_RATE_RANGE = (0.1, 1.0)
MERGE_CENTERS_RANGE = (1, 16)
PLAY_INTERVAL_S = 1.0  # ▶ play: one block per second (a 12-block tower in 12 s)


def config_from_controls(
    method: str,
    keep_rate: float,
    layers: str | Sequence[int],
    merge_centers: float | int,
    score: str,
) -> CondenseConfig:
    """A CondenseConfig from the app's controls, with range checks that name the control."""
    if keep_rate is None or not KEEP_RATE_RANGE[0] <= float(keep_rate) <= KEEP_RATE_RANGE[1]:
        raise ConfigError(
            f"keep rate R must be between {KEEP_RATE_RANGE[0]} and "
            f"{KEEP_RATE_RANGE[1]}, got {keep_rate}"
        )
    if (
        merge_centers is None
        or float(merge_centers) != int(float(merge_centers))
        or not MERGE_CENTERS_RANGE[0] <= int(float(merge_centers)) <= MERGE_CENTERS_RANGE[1]
    ):
        raise ConfigError(
            f"merge centres K must be a whole number from {MERGE_CENTERS_RANGE[0]} "
            f"to {MERGE_CENTERS_RANGE[1]}, got {merge_centers}"
        )
    layer_tuple = parse_layers(layers if layers is not None else "")
    record = METHODS.get(method)
    if record is not None and record.step is not None and not layer_tuple:
        raise ConfigError(
            f"no condensing layers given: enter block indices like {DEFAULT_LAYERS_TEXT}"
        )
    return CondenseConfig(
        method=method,
        keep_rate=float(keep_rate),
        layers=layer_tuple,
        merge_centers=int(float(merge_centers)),
        score=score,
    )


def check_prompt_count(n_labels: int, templates: str, max_prompts: int = MAX_PROMPTS) -> None:
    """LabelError if labels x templates exceeds what one request may encode."""
    n_temps = len(TEMPLATES[templates])
    if n_labels * n_temps > max_prompts:
        raise LabelError(
            f"too many prompts: {n_labels} labels x {n_temps} prompt templates = "
            f"{n_labels * n_temps}; one request may encode at most {max_prompts} (up to "
            f"{max_prompts // len(TEMPLATES['imagenet80'])} labels with the 80 ImageNet prompts, "
            f"up to {min(MAX_LABELS, max_prompts)} with one prompt)"
        )


def from_controls(
    image,
    labels: str | Sequence[str] | None,
    model: str | None,
    method: str,
    keep_rate: float,
    layers: str | Sequence[int],
    merge_centers: float | int,
    score: str,
    templates: str,
    default_model: str = DEFAULT_MODEL,
) -> Request:
    """The request of one event, from the controls' values as Gradio (or the API) hands them
    over. Raises a :class:`tca.errors.UserError` whose message names the control."""
    config = config_from_controls(method, keep_rate, layers, merge_centers, score)
    if templates not in TEMPLATES:
        raise InputError(
            f"unknown prompt templates {templates!r}; choose one of {', '.join(TEMPLATES)}"
        )
    if labels is None:
        raise LabelError('no labels: type at least two candidate labels, e.g. "cat, dog"')
    if isinstance(labels, str) and len(labels) > MAX_LABELS_TEXT:
        raise LabelError(
            f"the labels text is {len(labels)} characters long (at most "
            f"{MAX_LABELS_TEXT}); use at most {MAX_LABELS} short labels"
        )
    if image is None or (isinstance(image, str) and not image.strip()):
        raise InputError("no image: upload an image or pick one of the examples first")
    request = Request.build(
        image, labels, model or default_model, templates, config, max_labels=MAX_LABELS
    )
    check_prompt_count(len(request.labels), templates)
    return request


def request_or_none(*controls) -> Request | None:
    """:func:`from_controls`, or None when the controls do not make a valid request (the
    outdated-results check: such inputs never made the shown results)."""
    try:
        return from_controls(*controls)
    except (UserError, OSError):
        return None


__all__ = [
    "DEFAULT_CONFIG",
    "KEEP_RATE_RANGE",
    "MAX_LABELS",
    "MAX_PROMPTS",
    "MERGE_CENTERS_RANGE",
    "Request",
    "check_prompt_count",
    "config_from_controls",
    "from_controls",
    "request_or_none",
]
