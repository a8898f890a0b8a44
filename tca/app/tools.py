"""The app's API endpoints without a page of their own (for scripts and, over MCP, for agents):
``/flops``, a condensation's token schedule and GMACs from the architecture alone (no image,
no weights, no model pass). The answer is that of ``python -m tca flops --json``.
"""

from __future__ import annotations

from typing import Any

from tca.config import CondenseConfig, default_layers, format_layers
from tca.errors import ConfigError, InputError
from tca.flops import CONVENTION, Geometry, macs_for, saved_percent
from tca.methods import METHODS
from tca.models import DEFAULT_MODEL

from .request import DEFAULT_CONFIG, config_from_controls

MAX_MODEL_NAME = 200  # characters; longer is no open_clip model name


def flops(
    model: str = DEFAULT_MODEL,
    method: str = DEFAULT_CONFIG.method,
    keep_rate: float = DEFAULT_CONFIG.keep_rate,
    layers: str = "",
    merge_centers: int = DEFAULT_CONFIG.merge_centers,
) -> dict[str, Any]:
    """Token schedule and compute (GMACs) of token condensation in a CLIP ViT, from the architecture alone: no image, no weights.

    Args:
        model: open_clip model name, e.g. ViT-B-16-quickgelu, ViT-B-32-quickgelu, ViT-L-14-quickgelu.
        method: condensation method, one of METHOD_NAMES (none: plain CLIP).
        keep_rate: keep rate R between 0.1 and 1.0: the share of tokens each condensing block keeps (TCA's R; 1.0 removes nothing).
        layers: condensing blocks, 0-based and comma-separated, e.g. "3,6,9"; empty for the model's default (depth/4 x 1, 2, 3).
        merge_centers: TCA's merge centres K, a whole number from 1 to 16 (other methods ignore it).

    Returns:
        model, method, keep_rate, layers, convention; tokens_per_layer (tokens after every block); gmacs {baseline, condensed, saved_percent, overhead}; per-block rows {layer, tokens_in, tokens_out, gmacs}; adaptive (true when counts vary per image and these are the budget).
    """
    if not isinstance(model, str) or not model.strip() or len(model) > MAX_MODEL_NAME:
        raise InputError("model: give an open_clip model name, e.g. ViT-B-16-quickgelu")
    if not isinstance(method, str) or method not in METHODS:
        raise ConfigError(f"method: unknown {method!r}; choose one of {', '.join(METHODS)}")
    try:
        geom = Geometry.from_name(model.strip())
    except Exception as exc:  # an unknown name fails in open_clip's own lookup
        raise InputError(f"model: {model!r} is not an open_clip model this app knows") from exc
    if layers is not None and not isinstance(layers, str):
        raise InputError('layers: give the condensing blocks as text, e.g. "3,6,9"')
    if layers is None or not layers.strip():
        layers = format_layers(default_layers(geom.depth))
    config = config_from_controls(method, keep_rate, layers, merge_centers, DEFAULT_CONFIG.score)
    return flops_report(model.strip(), geom, config)


# the method names come from the registry (agents read this docstring)
flops.__doc__ = (flops.__doc__ or "").replace("METHOD_NAMES", ", ".join(METHODS))


def flops_report(model: str, geom: Geometry, config: CondenseConfig) -> dict[str, Any]:
    """The /flops answer (the same numbers as ``python -m tca flops --json``)."""
    base = macs_for(geom, CondenseConfig(method="none"))
    cond = macs_for(geom, config)
    return {
        "model": model,
        "method": config.method,
        "keep_rate": config.keep_rate,
        "layers": list(config.layers),
        "convention": CONVENTION,
        "tokens_per_layer": [l.n_mlp for l in cond.layers],
        "baseline_tokens_per_layer": [l.n_mlp for l in base.layers],
        "gmacs": {
            "baseline": base.gmacs,
            "condensed": cond.gmacs,
            "saved_percent": saved_percent(base, cond),
            "overhead": cond.overhead / 1e9,
        },
        "layers_detail": [
            {
                "layer": l.layer,
                "tokens_in": l.n_attention,
                "tokens_out": l.n_mlp,
                "gmacs": l.total / 1e9,
            }
            for l in cond.layers
        ],
        "adaptive": METHODS[config.method].adaptive,
    }


def mcp_state_outputs() -> None:
    """Let an MCP tool's endpoint have ``gr.State`` outputs (/classify keeps the Run and the
    stream reservoir in two). Gradio 6.31's MCP server drops them by position from a list
    with one value per output, but its queued path hands over ``[answer]``, the client's one
    answer (a tuple of the outputs), so every such call failed with "pop index out of range".
    The outputs are unpacked first; any other shape goes to Gradio's own code unchanged."""
    from gradio.components import State
    from gradio.mcp import GradioMCPServer

    own = GradioMCPServer.pop_returned_state
    if getattr(own, "tca_unpacks", False):
        return

    def pop_returned_state(components: Any, data: Any) -> list:
        values = data
        if len(components) > 1 and len(data) == 1 and isinstance(data[0], (tuple, list)):
            values = list(data[0])
        if len(values) != len(components):
            return own(components, data)
        return [v for v, c in zip(values, components) if not isinstance(c, State)]

    pop_returned_state.tca_unpacks = True  # type: ignore[attr-defined]
    GradioMCPServer.pop_returned_state = staticmethod(pop_returned_state)  # type: ignore[method-assign]


__all__ = ["flops", "flops_report", "mcp_state_outputs"]
