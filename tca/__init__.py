"""TCA Explorer: training-free token condensation for open_clip ViTs.

    import tca
    clip = tca.load_model("ViT-B-16-quickgelu", pretrained="openai")
    tca.patch(clip.model, method="tca", keep_rate=0.7)
    result = tca.classify(clip, "cat.jpg", "cat, dog, car", tca.CondenseConfig(keep_rate=0.7))

See README.md for the full API.
"""

from .config import (
    DEFAULT_LAYERS,
    METHODS,
    CondenseConfig,
    ConfigError,
    Schedule,
    keep_rate_to_rate,
    plan_layers,
)
from .errors import (
    CliError,
    EvalError,
    InputError,
    LabelError,
    UnknownModelError,
    UserError,
    WeightsUnavailableError,
)
from .flops import (
    CONVENTION,
    FlopReport,
    Geometry,
    count_macs,
    macs_for,
    macs_per_image,
    mean_gmacs,
)
from .images import ImageError, load_image
from .labels import parse_labels, validate_labels
from .models import DEFAULT_MODEL, DEFAULT_PRETRAINED, SUPPORTED_MODELS, ClipModel, load_model
from .patch import Encoded, UnsupportedModelError, encode, is_patched, patch, unpatch
from .pipeline import Baseline, Prediction, RunResult, baseline_of, classify, prepare_image
from .prompts import PRESET_TEMPLATES, TEMPLATES, templates_for
from .reservoir import PRESETS, Reservoir, ReservoirConfig, preset, stream_update
from .trace import KEPT, MERGED, PRUNED, Trace

__version__ = "0.1.0"

__all__ = [
    "UserError",
    "InputError",
    "UnknownModelError",
    "EvalError",
    "CliError",
    "CondenseConfig",
    "ConfigError",
    "METHODS",
    "DEFAULT_LAYERS",
    "Schedule",
    "plan_layers",
    "keep_rate_to_rate",
    "patch",
    "unpatch",
    "encode",
    "is_patched",
    "Encoded",
    "UnsupportedModelError",
    "Trace",
    "KEPT",
    "MERGED",
    "PRUNED",
    "Geometry",
    "FlopReport",
    "count_macs",
    "macs_for",
    "CONVENTION",
    "Reservoir",
    "ReservoirConfig",
    "PRESETS",
    "preset",
    "stream_update",
    "ClipModel",
    "load_model",
    "parse_labels",
    "validate_labels",
    "LabelError",
    "WeightsUnavailableError",
    "TEMPLATES",
    "SUPPORTED_MODELS",
    "DEFAULT_MODEL",
    "DEFAULT_PRETRAINED",
    "load_image",
    "ImageError",
    "classify",
    "prepare_image",
    "Prediction",
    "RunResult",
    "Baseline",
    "baseline_of",
    "macs_per_image",
    "mean_gmacs",
    "PRESET_TEMPLATES",
    "templates_for",
]
