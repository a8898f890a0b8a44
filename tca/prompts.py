"""Prompt templates as named sets, which set each dataset preset implies, and what a templates
argument (a set name, a format string or a list of them) resolves to.

The paper's cross-dataset protocol (TCA's runner is a fork of TDA's) builds one class prompt per
dataset from the templates of CoOp (Zhou et al., IJCV 2022, ``trainers/zsclip.py``,
``CUSTOM_TEMPLATES``), as shipped in TDA's dataset files (``datasets/*.py``, ``template``). They
are public data, retyped here:

* fine-grained sets use one template each, e.g. Oxford Pets "a photo of a {}, a type of pet.",
  EuroSAT "a centered satellite photo of {}.", DTD "{} texture.";
* the ImageNet family uses TDA's seven-template ensemble, a subset of OpenAI CLIP's 80 ImageNet
  templates. Those are taken from ``open_clip.zero_shot_metadata`` (OpenAI's release) rather than
  retyped, so the strings cannot drift.

OpenAI's larger per-dataset ensembles (e.g. three EuroSAT templates) are a different protocol and
not included; ``clip_benchmark`` ships them. Template-set names equal the reservoir preset names
(``tca.reservoir.PRESETS``), so ``--preset eurosat`` implies ``--templates eurosat``.
"""

from __future__ import annotations

from typing import Sequence

from open_clip import zero_shot_metadata

from .errors import ConfigError, InputError

_OPENAI_IMAGENET = tuple(t("{}") for t in zero_shot_metadata.OPENAI_IMAGENET_TEMPLATES)
# TDA's ImageNet ensemble, in TDA's order (all seven are among OpenAI's 80).
_IMAGENET7 = tuple(_OPENAI_IMAGENET[i] for i in (73, 7, 44, 69, 35, 67, 64))

# CoOp / TDA per-dataset templates (one each).
_DATASET_TEMPLATE = {
    "caltech101": "a photo of a {}.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "food101": "a photo of {}, a type of food.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "oxford_pets": "a photo of a {}, a type of pet.",
    "stanford_cars": "a photo of a {}.",
    "sun397": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
}
_IMAGENET_FAMILY = ("imagenet", "imagenet_a", "imagenet_v2", "imagenet_r", "imagenet_sketch")

TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": ("a photo of a {}.",),
    "imagenet80": _OPENAI_IMAGENET,
    "imagenet7": _IMAGENET7,
    **{name: (t,) for name, t in _DATASET_TEMPLATE.items()},
    **{name: _IMAGENET7 for name in _IMAGENET_FAMILY},
}
DEFAULT_TEMPLATES = "single"
# The reservoir preset "default" is ImageNet's hyper-parameters but keeps the plain prompt, as
# before presets implied templates.
PRESET_TEMPLATES: dict[str, str] = {
    "default": DEFAULT_TEMPLATES,
    **{n: n for n in (*_DATASET_TEMPLATE, *_IMAGENET_FAMILY)},
}


def templates_for(preset: str | None, templates: str | None = None) -> str:
    """The template-set name to use: ``templates`` when given, else the one ``preset`` implies
    (``single`` for no preset or a preset without a dataset)."""
    if templates is not None:
        return templates
    if preset is None:
        return DEFAULT_TEMPLATES
    if preset not in PRESET_TEMPLATES:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESET_TEMPLATES)}")
    return PRESET_TEMPLATES[preset]


def resolve_templates(templates: str | Sequence[str]) -> tuple[str, ...]:
    """The prompt templates meant by ``templates``: a set's name (a key of :data:`TEMPLATES`), one
    format string, or a sequence of them; each must contain ``{}`` (where the label goes)."""
    if isinstance(templates, str):
        if templates in TEMPLATES:
            return TEMPLATES[templates]
        if "{}" in templates:
            return (templates,)
        raise InputError(
            f"unknown templates {templates!r}; use one of {', '.join(TEMPLATES)} "
            f"or a format string containing {{}}"
        )
    temps = tuple(templates)
    if not temps or not all("{}" in t for t in temps):
        raise InputError("every prompt template must contain {}")
    return temps


__all__ = [
    "TEMPLATES",
    "PRESET_TEMPLATES",
    "DEFAULT_TEMPLATES",
    "templates_for",
    "resolve_templates",
]
