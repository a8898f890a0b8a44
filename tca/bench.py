"""`python -m tca bench`: speed benchmark (placeholder until issue 5 lands)."""
from __future__ import annotations

import argparse


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="interleaved speed benchmark")
    p.set_defaults(func=lambda args: (_ for _ in ()).throw(NotImplementedError("bench")))


def main(args: argparse.Namespace) -> int:  # pragma: no cover
    raise NotImplementedError
