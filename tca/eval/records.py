"""Resumable per-run output: JSONL records of every image and a TCA run's reservoir state.

Every evaluated image is appended to its run's JSONL file as soon as its batch is done (a TCA
run also keeps a reservoir snapshot plus an append-only log of the images filed since), so
rerunning the same command after a crash resumes where it stopped and loses nothing computed.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from ..errors import EvalError
from ..reservoir import Reservoir
from .settings import Setting

RECORDS_VERSION = 1
# A TCA run's reservoir log is folded into a fresh snapshot once it holds this many images
# (times the reservoir's capacity), which bounds the disk it needs.
COMPACT_FACTOR = 1
COMPACT_MIN = 8


def check_records_dir(path: str | os.PathLike) -> Path:
    """``path`` as a records folder, or EvalError when it (or a folder above it) is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            what = "is a file" if p == path else f"lies under {str(p)!r}, which is a file"
            raise EvalError(
                f"--records {str(path)!r} {what}: records go in a folder (one JSONL file per "
                f"run); give a folder path"
            )
    return path


class RunLog:
    """The per-image JSONL records of one run (a setting on one stream order).

    Line 1 is a header describing the run; each further line is one image, at stream position
    ``k`` = 0, 1, 2, ... . Existing records with the same header are resumed; a torn last line
    (a crash mid-write) is dropped. Every batch is flushed and fsynced when appended."""

    def __init__(self, path: Path | None, header: dict, fresh: bool = False) -> None:
        self.path = path
        self.header = header
        self.records: list[dict] = []
        self._f: IO[str] | None = None
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not fresh:
            self.records = self._read(path, header)
        self._rewrite(path)

    @staticmethod
    def _read(path: Path, header: dict) -> list[dict]:
        records: list[dict] = []
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        try:
            head = json.loads(lines[0]).get("header")
        except (json.JSONDecodeError, AttributeError):
            return []
        if head != header:
            return []
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # torn line: everything after it is discarded
            if not isinstance(rec, dict) or rec.get("k") != len(records):
                break
            records.append(rec)
        return records

    def _rewrite(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps({"header": self.header}) + "\n")
            for rec in self.records:
                f.write(json.dumps(rec) + "\n")
        os.replace(tmp, path)
        self._f = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open across batches

    @property
    def done(self) -> int:
        return len(self.records)

    def truncate(self, n: int) -> None:
        if n < len(self.records):
            self.records = self.records[:n]
            if self.path is not None:
                self.close()
                self._rewrite(self.path)

    def append(self, records: list[dict]) -> None:
        self.records.extend(records)
        if self._f is not None:
            self._f.write("".join(json.dumps(r) + "\n" for r in records))
            self._f.flush()
            os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


class ReservoirStore:
    """Makes a TCA stream resumable: a snapshot of the reservoir (``.pt``) plus an append-only
    binary log (``.bin``) of every image filed since, replayed through ``Reservoir.update`` on
    resume (bit-identical state). The log is folded into a new snapshot once it is as large as
    the reservoir itself, so disk use stays bounded."""

    def __init__(self, base: Path, num_classes: int, depth: int, width: int, embed: int) -> None:
        self.snapshot = base.with_name(base.name + ".reservoir.pt")
        self.log = base.with_name(base.name + ".reservoir.bin")
        self.dtype = np.dtype(
            [
                ("k", "<i8"),
                ("logits", "<f4", (num_classes,)),
                ("cls", "<f4", (depth, width)),
                ("emb", "<f4", (embed,)),
            ]
        )
        self.logged = 0

    def discard(self) -> None:
        for p in (self.snapshot, self.log):
            p.unlink(missing_ok=True)

    def restore(self, reservoir: Reservoir, filed: list[int], upto: int) -> bool:
        """Rebuild ``reservoir`` as it was after stream position ``upto`` - 1. ``filed``: the
        positions < ``upto`` whose images were filed (the readable ones). Returns False (and
        leaves the reservoir empty) when the stored state does not cover exactly those."""
        reservoir.reset()
        start = 0
        if self.snapshot.exists():
            try:
                state = torch.load(self.snapshot, map_location="cpu", weights_only=True)
                start = int(state["position"])
                if start > upto:
                    raise ValueError("snapshot does not match the records")
                reservoir.load_state_dict(state["reservoir"])
            except Exception:  # noqa: BLE001 - unreadable/inconsistent: the caller restarts
                reservoir.reset()
                return False
        records = self._read_log()
        keep = records[(records["k"] >= start) & (records["k"] < upto)]
        if keep["k"].tolist() != [k for k in filed if start <= k < upto]:
            reservoir.reset()
            return False
        for r in keep:
            reservoir.update(
                torch.from_numpy(r["cls"].copy()),
                torch.from_numpy(r["logits"].copy()),
                torch.from_numpy(r["emb"].copy()),
            )
        # Drop log entries past the resumed position (filed, but their records never written).
        n_valid = int(np.searchsorted(records["k"], upto)) if len(records) else 0
        if self.log.exists():
            with open(self.log, "r+b") as f:
                f.truncate(n_valid * self.dtype.itemsize)
        self.logged = len(keep)
        return True

    def _read_log(self) -> np.ndarray:
        if not self.log.exists():
            return np.zeros(0, dtype=self.dtype)
        raw = self.log.read_bytes()
        whole = len(raw) // self.dtype.itemsize * self.dtype.itemsize  # drop a torn record
        return np.frombuffer(raw[:whole], dtype=self.dtype)

    def append(
        self, ks: list[int], logits: torch.Tensor, cls: torch.Tensor, emb: torch.Tensor
    ) -> None:
        rec = np.zeros(len(ks), dtype=self.dtype)
        rec["k"] = ks
        rec["logits"] = logits.detach().float().cpu().numpy()
        rec["cls"] = cls.detach().float().cpu().numpy()
        rec["emb"] = emb.detach().float().cpu().numpy()
        with open(self.log, "ab") as f:
            f.write(rec.tobytes())
            f.flush()
            os.fsync(f.fileno())
        self.logged += len(ks)

    def maybe_compact(self, reservoir: Reservoir, position: int) -> None:
        capacity = reservoir.num_classes * reservoir.config.size
        if self.logged < max(COMPACT_MIN, COMPACT_FACTOR * capacity):
            return
        state = {"position": position, "reservoir": reservoir.state_dict()}
        tmp = self.snapshot.with_name(self.snapshot.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.snapshot)
        with open(self.log, "wb"):
            pass
        self.logged = 0


@dataclass(eq=False)
class Run:
    """One setting on one stream order: its records, and for TCA its own fresh reservoir (and
    the store that makes that reservoir resumable)."""

    setting: Setting
    repeat: int
    order: list[int]  # dataset index at each stream position
    log: RunLog
    reservoir: Reservoir | None = None
    store: ReservoirStore | None = None
    computed: int = 0  # images run through the model in this call
    resumed: int = 0  # stream positions taken from existing records


__all__ = ["Run", "RunLog", "ReservoirStore", "RECORDS_VERSION", "check_records_dir"]
