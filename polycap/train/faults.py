"""Test-only fault injection for training, so kill and disk-failure tests are deterministic.

``POLYCAP_TRAIN_HOOK=pause@checkpoint:2,enospc@final:1``: at the n-th time training reaches a
point (``step``: an optimizer step done; ``checkpoint`` / ``final`` / ``best``: inside that
save, all files but polycap.json written), ``pause`` writes ``POLYCAP_TRAIN_HOOK_FILE`` and
waits to be killed; ``enospc`` / ``erofs`` raise the OSError a full / read-only disk gives.
Without the variable the hook does nothing.
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path

HOOK_ENV = "POLYCAP_TRAIN_HOOK"
HOOK_FILE_ENV = "POLYCAP_TRAIN_HOOK_FILE"


class FaultHook:
    """Called by the trainer at each point; acts when a rule names the point and its count."""

    def __init__(self, spec: str | None = None) -> None:
        spec = os.environ.get(HOOK_ENV, "") if spec is None else spec
        self.rules = []
        for item in filter(None, (part.strip() for part in spec.split(","))):
            action, _, where = item.partition("@")
            point, _, count = where.partition(":")
            self.rules.append((action, point, int(count or 1)))
        self.seen: dict[str, int] = {}

    def __call__(self, point: str, main: bool = True) -> None:
        if not self.rules:
            return
        self.seen[point] = count = self.seen.get(point, 0) + 1
        for action, rule_point, rule_count in self.rules:
            if (rule_point, rule_count) != (point, count):
                continue
            if action == "pause":
                marker = os.environ.get(HOOK_FILE_ENV)
                if marker and main:
                    Path(marker).write_text(f"{point}:{count}\n", encoding="utf-8")
                time.sleep(600)
            elif action in ("enospc", "erofs"):
                code = errno.ENOSPC if action == "enospc" else errno.EROFS
                raise OSError(code, os.strerror(code))
