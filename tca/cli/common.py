"""What every sub-command shares: the model and condensing options, and turning them into a
config and a loaded model (the device checked with a message naming --device).
"""

from __future__ import annotations

import argparse
import os

import torch

from ..config import (
    DEFAULT_LAYERS_TEXT,
    METHODS,
    SCORES,
    CondenseConfig,
    parse_layers,
)
from ..errors import CliError
from ..models import (
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    ClipModel,
    load_model,
)
from ..precision import AUTO, PRECISION_CHOICES, resolve


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"open_clip model name (default {DEFAULT_MODEL})"
    )
    p.add_argument(
        "--pretrained",
        default=DEFAULT_PRETRAINED,
        help="open_clip pretrained tag, or 'none' for random weights (default openai)",
    )
    p.add_argument(
        "--checkpoint",
        default=os.environ.get("TCA_CHECKPOINT") or None,
        help="local .safetensors / state-dict file (default: $TCA_CHECKPOINT)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for random initialisation")
    p.add_argument(
        "--device",
        default="cpu",
        help="torch device to run on, e.g. cpu, cuda, cuda:1 (default cpu)",
    )
    p.add_argument(
        "--precision",
        default=AUTO,
        choices=PRECISION_CHOICES,
        help="auto (default: bf16 on a CPU with native bfloat16, AMX or AVX-512 BF16; fp32 "
        "elsewhere and on CUDA), fp32 (exact, as in the paper), or open_clip's mixed fp16 / "
        "bf16 (half-precision weights; LayerNorms, distances and logits in float32)",
    )


def add_condense_args(p: argparse.ArgumentParser, method_default: str = "tca") -> None:
    p.add_argument("--method", default=method_default, choices=METHODS)
    p.add_argument("--keep-rate", type=float, default=0.9, help="the paper's keep rate R in (0, 1]")
    p.add_argument(
        "--rate",
        type=float,
        default=None,
        help="TCA only: the released code's raw rate d (overrides --keep-rate)",
    )
    p.add_argument(
        "--layers", default=DEFAULT_LAYERS_TEXT, help="condensing block indices, 0-based"
    )
    p.add_argument("--merge-centers", type=int, default=2, help="TCA coreset centres K")
    p.add_argument("--score", default="mean", choices=SCORES)
    p.add_argument(
        "--center-seed",
        type=int,
        default=None,
        help="TCA only: draw each image's first coreset centre at random with this "
        "seed, as the released code does (default: the most-attended tier-2 token)",
    )


def config_from_args(args: argparse.Namespace) -> CondenseConfig:
    return CondenseConfig(
        method=args.method,
        keep_rate=args.keep_rate,
        rate=args.rate,
        layers=parse_layers(args.layers),
        merge_centers=args.merge_centers,
        score=args.score,
        center_seed=getattr(args, "center_seed", None),
    )


def load_from_args(args: argparse.Namespace) -> ClipModel:
    device = parse_device(args.device)
    return load_model(
        args.model,
        args.pretrained,
        args.checkpoint,
        device=device,
        seed=args.seed,
        precision=resolve(args.precision, device),
    )


def parse_device(text: str) -> str:
    """A torch device name (CliError naming --device if it is not one, or CUDA is absent)."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise CliError(
            f"--device {text!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device {text}: CUDA is not available on this machine")
    return str(device)


__all__ = [
    "add_condense_args",
    "add_model_args",
    "config_from_args",
    "load_from_args",
    "parse_device",
]
