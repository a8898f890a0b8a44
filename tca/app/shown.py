"""What one visitor's page shows right now, kept on the server: the block and the followed patch
(:class:`OnScreen`), and the steps of ▶ play through the blocks (:func:`play_step`).

Display events (a strip tile, ◀ / ▶, the slider, play, following a patch, Stop following) take
the session's ``OnScreen``, change it and draw their answer from it while holding its lock. An
answer is therefore drawn from everything the visitor asked for before it: a strip tile's answer
that was still in flight when the visitor pressed Stop following no longer brings the followed
patch back, and Stop following redraws the block the tile moved to, not the one before.
"""

from __future__ import annotations

import threading

PLAY_LABEL = "\u25b6 Play"
PAUSE_LABEL = "\u25ae\u25ae Pause"  # (U+23F8 is missing from common fonts)


class OnScreen:
    """One session's shown block and followed patch (None: not known yet / not following);
    ``version`` counts the changes of the followed patch. (A plain class, not a dataclass:
    Gradio turns a dataclass state value into a dict for its config, which a lock refuses.)"""

    def __init__(self, layer: int | None = None, patch: int | None = None, version: int = 0):
        self.layer = layer
        self.patch = patch
        self.version = version
        self.lock = threading.RLock()

    def __deepcopy__(self, memo: dict) -> OnScreen:
        # gr.State deep-copies its initial value per session: a fresh lock for each
        return OnScreen(self.layer, self.patch, self.version)

    def __repr__(self) -> str:
        return f"OnScreen(layer={self.layer}, patch={self.patch}, version={self.version})"

    def follow(self, patch: int | None) -> None:
        """Follow ``patch`` (None: stop following); call with the lock held."""
        if patch != self.patch:
            self.patch = patch
            self.version += 1


def play_step(layer: int, depth: int) -> tuple[int, bool]:
    """One tick of ▶ play: the next block, and whether to keep playing (play stops on the last
    block)."""
    nxt = min(max(0, int(layer)) + 1, depth - 1)
    return nxt, nxt < depth - 1


def play_start(layer: int, depth: int) -> int:
    """The block ▶ play starts from: where the visitor is, or block 0 from the last block."""
    return 0 if int(layer) >= depth - 1 else max(0, int(layer))


__all__ = ["OnScreen", "PAUSE_LABEL", "PLAY_LABEL", "play_start", "play_step"]
