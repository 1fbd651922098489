"""A training run's folder: it belongs to one run, is writable, and holds no stale leftovers.

::

    run.json              the run's identity (model-shaping options, fixed for the run) and
                          its other options, with what each ``--resume`` changed
    checkpoint-00000012/  model + trainer state at optimizer step 12 (the newest few kept)
    final/                the finished model
    best/                 the best epoch's model by --best-metric (its training record says
                          which epoch and score)
    logs/                 experiment tracker files (--log-with tensorboard, ...)
    features/             the images' features (polycap.data.features store; reused when the
                          images and encoder are the same)

A run holds the folder's lock (``.polycap-run.lock``, :mod:`polycap.util.run_lock`) while it
goes: a second run into it is refused with the first one's pid. Temporary folders a killed save
leaves (``.checkpoint-….tmp-…``, ``.final.old-…``) are cleaned
when the next run starts; a swap interrupted between its two renames is completed backwards
(the old folder put back), so the last good checkpoint is never lost.
"""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from polycap.errors import BadInput
from polycap.util.atomic import write_json

RUN_FILE = "run.json"
CHECKPOINT_PREFIX = "checkpoint-"
FINAL = "final"
BEST = "best"
FEATURES = "features"
TRAINER_STATE = "trainer_state.pt"

# options that make a run what it is: a --resume that changes one is refused (flag shown)
FIXED = {
    "language": "--lang",
    "encoder": "--encoder",
    "pretrained": "--pretrained",
    "lm": "--lm",
    "mapper": "--mapper",
    "mapper_options": "--clip-length",
    "prefix_length": "--prefix-length",
    "train_lm": "--train-lm/--freeze-lm",
    "normalize_features": "normalize_features",
    "standardize_features": "--standardize-features/--raw-features",
    "data": "--data",
    "data_format": "--format",
    "max_tokens": "--max-tokens",
    "val_fraction": "--val-fraction",
    "seed": "--seed",
    "batch_size": "--batch-size",
    "grad_accum": "--grad-accum",
    "processes": "processes",
    "best_metric": "--best-metric",  # best/ and the best-so-far are by one metric for a run
}
# options a --resume may change; each change is recorded in run.json
MAY_CHANGE = (
    "epochs",
    "lr",
    "weight_decay",
    "warmup_steps",
    "precision",
    "save_every",
    "keep_checkpoints",
    "save_lm",
    "images_dir",
    "device",
    "cache_dir",
    "eval_metrics",
    "early_stop",
    "log_with",
)


def _normalised(value: Any) -> Any:
    """Local paths compared as absolute paths (``runs/x`` and ``./runs/x`` are one folder)."""
    if isinstance(value, str) and value and Path(value).exists():
        return str(Path(value).resolve())
    return value


class RunFolder:
    """The folder one training run writes into (see the module docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    # -- what is there ------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete checkpoints (trainer state written), oldest first."""
        if not self.path.is_dir():
            return []
        found = [
            path
            for path in self.path.glob(f"{CHECKPOINT_PREFIX}*")
            if path.name[len(CHECKPOINT_PREFIX) :].isdigit() and (path / TRAINER_STATE).is_file()
        ]
        return sorted(found, key=lambda path: int(path.name[len(CHECKPOINT_PREFIX) :]))

    def latest_checkpoint(self) -> Path | None:
        found = self.checkpoints()
        return found[-1] if found else None

    def checkpoint_path(self, step: int) -> Path:
        return self.path / f"{CHECKPOINT_PREFIX}{step:08d}"

    @property
    def final(self) -> Path:
        return self.path / FINAL

    @property
    def best(self) -> Path:
        return self.path / BEST

    def holds_run(self) -> bool:
        return self.path.is_dir() and (
            (self.path / RUN_FILE).is_file() or bool(self.checkpoints()) or self.final.is_dir()
        )

    def recorded(self) -> dict[str, Any]:
        """run.json, or for folders written before it existed, the newest training record."""
        run_file = self.path / RUN_FILE
        if run_file.is_file():
            try:
                return json.loads(run_file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise BadInput(f"{run_file}: not valid JSON ({error})") from None
        for source in (self.latest_checkpoint(), self.final):
            config = source / "polycap.json" if source is not None else None
            if config is not None and config.is_file():
                training = json.loads(config.read_text(encoding="utf-8")).get("training") or {}
                return {"identity": {k: training.get(k) for k in FIXED if k in training}}
        return {"identity": {}}

    def describe(self) -> str:
        recorded = self.recorded()
        identity = recorded.get("identity", {})
        parts = [f"language {identity['language']}"] if identity.get("language") else []
        if recorded.get("started"):
            parts.append(f"started {recorded['started']}")
        steps = [int(p.name[len(CHECKPOINT_PREFIX) :]) for p in self.checkpoints()]
        if steps:
            parts.append(f"checkpoint at step {steps[-1]}")
        if self.final.is_dir():
            parts.append("a final model")
        return ", ".join(parts) or "its files"

    # -- taking the folder ----------------------------------------------------------------------
    def lock(self) -> None:
        """Hold the folder for this run (:mod:`polycap.util.run_lock`); BadInput naming the
        holder's pid when another run is writing into it."""
        from polycap.util.run_lock import acquire

        acquire(self.path)

    def unlock(self) -> None:
        from polycap.util.run_lock import release

        release(self.path)

    def clean_stale(self) -> list[Path]:
        """Remove temporary folders left by a killed save; put back an old folder whose swap
        was cut between its renames. Returns what was removed or restored."""
        if not self.path.is_dir():
            return []
        cleaned = []
        for leftover in sorted(self.path.glob(".*.old-*")):
            name = leftover.name[1 : leftover.name.rindex(".old-")]
            if not (self.path / name).exists() and leftover.is_dir():
                os.replace(leftover, self.path / name)
            else:
                shutil.rmtree(leftover, ignore_errors=True)
            cleaned.append(leftover)
        for leftover in sorted(self.path.glob(".*.tmp-*")):
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)
            cleaned.append(leftover)
        return cleaned

    def _models(self) -> list[Path]:
        """The model folders a run writes here (checkpoint-N, final, best) that exist."""
        checkpoints = [
            path
            for path in self.path.glob(f"{CHECKPOINT_PREFIX}*")
            if path.name[len(CHECKPOINT_PREFIX) :].isdigit()
        ]
        return [path for path in [*checkpoints, self.final, self.best] if path.exists()]

    def check_clearable(self) -> list[Path]:
        """The model folders :meth:`clear` would remove; BadInput when one holds something
        else than a polycap model (a user's own ``final/``), which polycap never deletes."""
        models = self._models()
        for path in models:
            if path.is_dir() and any(path.iterdir()) and not (path / "polycap.json").is_file():
                raise BadInput(
                    f"--overwrite {self.path}: {path.name}/ is not a polycap model (no "
                    "polycap.json); polycap does not delete it: move it away or choose "
                    "another --output"
                )
            if not path.is_dir():
                raise BadInput(f"--overwrite {self.path}: {path.name} is a file, not a model")
        return models

    def clear(self) -> None:
        """Remove a previous run's files (only polycap's own: run.json, checkpoints, final,
        best, tracker logs); refused before anything goes when :meth:`check_clearable` is."""
        models = self.check_clearable()
        logs = self.path / "logs"  # polycap.train.trackers.LOG_DIR
        for path in [*models, logs]:
            if path.is_dir():
                shutil.rmtree(path)
        (self.path / RUN_FILE).unlink(missing_ok=True)

    def claim(
        self, options: dict[str, Any], resume: bool, overwrite: bool, write: bool = True
    ) -> list[str]:
        """Make this folder the run's: refuse another run's folder (unless ``overwrite``), refuse
        a resume that changes a fixed option, record the options a resume changed. Returns
        the changes, as ``option old -> new`` strings. ``write=False`` only checks."""
        if resume and overwrite:
            raise BadInput("--resume and --overwrite: choose one")
        identity = {key: _normalised(options.get(key)) for key in FIXED}
        others = {key: _normalised(options.get(key)) for key in MAY_CHANGE}
        if self.holds_run() and not resume:
            if not overwrite:
                raise BadInput(
                    f"--output {self.path}: holds another run ({self.describe()}); "
                    "use --resume to continue it or --overwrite to replace it"
                )
            self.check_clearable()
            if not write:
                return []
            self.clear()
        recorded = self.recorded() if self.holds_run() else {}
        if not write:
            self._refuse_fixed_changes(recorded.get("identity", {}), identity)
            return []
        if not recorded:
            record = {
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "identity": identity,
                "options": others,
                "resumes": [],
            }
            write_json(self.path / RUN_FILE, record, indent=2)
            return []
        self._refuse_fixed_changes(recorded.get("identity", {}), identity)
        before = recorded.get("options", {})
        changed = {
            key: [before.get(key), value]
            for key, value in others.items()
            if key in before and before.get(key) != value
        }
        recorded.setdefault("identity", identity)
        recorded["options"] = others
        recorded.setdefault("resumes", []).append(
            {"at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "changed": changed}
        )
        write_json(self.path / RUN_FILE, recorded, indent=2)
        return [f"{key} {old} -> {new}" for key, (old, new) in changed.items()]

    def _refuse_fixed_changes(self, recorded: dict[str, Any], wanted: dict[str, Any]) -> None:
        differences = [
            f"{FIXED[key]} {wanted[key]} (the run has {recorded[key]})"
            for key in FIXED
            if key in recorded and _normalised(recorded[key]) != wanted[key]
        ]
        if differences:
            raise BadInput(
                f"--resume {self.path}: options differ from the run's: {'; '.join(differences)}. "
                "Resume with the run's options, or start a new run (another --output, "
                "or --overwrite)"
            )
