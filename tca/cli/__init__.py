"""Command line: ``python -m tca {predict,flops,eval,bench} ...``.

All argument parsing lives in this package (one module per sub-command, ``common`` for the
shared options); the sub-commands call library code (``tca.pipeline``,
``tca.flops``, ``tca.eval``, ``tca.bench``), which never imports this module. Any
:class:`tca.errors.UserError` is printed as one ``error: ...`` line with exit status 2; every
other exception is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from ..errors import CliError, UserError
from .bench import add_bench_parser
from .common import add_condense_args, add_model_args, config_from_args, load_from_args
from .evaluate import add_eval_parser
from .predict import add_flops_parser, add_predict_parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tca", description="Training-free token condensation for CLIP."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_predict_parser(sub)
    add_flops_parser(sub)
    add_eval_parser(sub)
    add_bench_parser(sub)
    return parser


def register_model_configs() -> None:
    """Extra open_clip model configs (JSON files) from $TCA_MODEL_CONFIGS, a directory."""
    folder = os.environ.get("TCA_MODEL_CONFIGS")
    if folder:
        if not os.path.isdir(folder):
            raise CliError(f"TCA_MODEL_CONFIGS={folder!r} is not a directory")
        import open_clip

        open_clip.add_model_config(folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        register_model_configs()
        return int(args.func(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = [
    "CliError",
    "add_condense_args",
    "add_model_args",
    "build_parser",
    "config_from_args",
    "load_from_args",
    "main",
    "register_model_configs",
]
