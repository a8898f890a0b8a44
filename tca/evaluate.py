"""`python -m tca eval`: folder evaluation (placeholder until issue 5 lands)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate methods over a labelled image folder")
    p.set_defaults(func=lambda args: (_ for _ in ()).throw(NotImplementedError("eval")))


def main(args: argparse.Namespace) -> int:  # pragma: no cover
    raise NotImplementedError
