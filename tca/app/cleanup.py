"""Deleting the app's uploads and outputs as they age, in a thread that survives errors.

Gradio's own ``delete_cache`` (``gr.Blocks(delete_cache=...)``, also set by the app) runs
``gradio.route_utils.delete_files_on_schedule`` (Gradio 6.31.0): a ``while True`` loop with no
``try`` around ``delete_files_created_by_app``, which iterates each live set of temp files while
uploads add to it and catches only ``FileNotFoundError``. The first other exception (e.g.
``RuntimeError: Set changed size during iteration`` under concurrent uploads, or a
``PermissionError``) ends the task for good and the folder then grows without bound. This
sweeper calls the same Gradio function on the same schedule and simply tries again at the next
tick; remove it when Gradio's loop catches errors.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
import weakref
from pathlib import Path
from typing import Any, Callable


def _gradio_delete(blocks: Any, older_than_s: float) -> None:
    from gradio.route_utils import delete_files_created_by_app

    delete_files_created_by_app(blocks, int(older_than_s))


def keep_deleting(
    blocks: Any,
    every_s: float,
    older_than_s: float,
    delete: Callable[[Any, float], None] = _gradio_delete,
) -> threading.Thread:
    """Every ``every_s`` seconds, delete what ``blocks`` created more than ``older_than_s``
    seconds ago; an exception is swallowed and the next tick retries. The thread ends when
    ``blocks`` is garbage-collected."""
    ref = weakref.ref(blocks)

    def work() -> None:
        while True:
            time.sleep(every_s)
            alive = ref()
            if alive is None:  # the app is gone
                return
            try:
                delete(alive, older_than_s)
            except Exception:  # noqa: BLE001 - e.g. a concurrent upload; the next tick retries
                pass
            del alive

    t = threading.Thread(target=work, name="tca-delete-cache", daemon=True)
    t.start()
    return t


def delete_old_dirs(
    folder: str | os.PathLike, prefix: str, older_than_s: float, now: float | None = None
) -> int:
    """Delete the folders ``folder/prefix*`` last modified more than ``older_than_s`` seconds
    before ``now`` (default: the clock); the number deleted. Used for the inline (``data:``
    URL) images :class:`tca.app.limits.EventInputs` writes, which Gradio does not track."""
    now = time.time() if now is None else now
    gone = 0
    try:
        entries = list(Path(folder).glob(f"{prefix}*"))
    except OSError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir() and now - entry.stat().st_mtime > older_than_s:
                shutil.rmtree(entry, ignore_errors=True)
                gone += 1
        except OSError:  # deleted meanwhile
            pass
    return gone


__all__ = ["delete_old_dirs", "keep_deleting"]
