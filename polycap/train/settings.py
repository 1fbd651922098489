"""Every training setting, written once: :class:`TrainSettings`.

One typed object serves the CLI (``polycap train`` builds it from its options), a settings
file (``polycap train --config run.toml``: TOML, the field names as keys, a ``[mapper]`` table
for the mapper's kind and options; flags given on the command line override it), the Python
API (``train(TrainSettings(...))``) and resume (the resolved settings are saved in the run
folder as ``settings.toml``, and ``--resume`` starts from them). Values are checked before any
work (:meth:`TrainSettings.validate`, :func:`check_settings`): one line naming the option.

Later layers override earlier ones::

    defaults  <  the run's saved settings (--resume)  <  --config FILE  <  flags given
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from polycap.errors import BadInput

if TYPE_CHECKING:
    from polycap.plugins import Registries
    from polycap.train.selection import Selection

SETTINGS_FILE = "settings.toml"  # in the run folder: the run's resolved settings
PRECISIONS = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}
# transformers.get_scheduler names that need nothing but warm-up and total steps
LR_SCHEDULES = (
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "constant",
    "constant_with_warmup",
    "inverse_sqrt",
)
NOT_SAVED = ("progress",)  # how a run shows itself, not what it trains
# the command-line spelling of a setting, where it is not --<name with dashes>
FLAGS = {
    "language": "--lang",
    "images_dir": "--images",
    "data_format": "--format",
    "allow_outside_images": "--allow-outside-images",
    "mapper_options": "--mapper-option",
    "train_lm": "--train-lm/--freeze-lm",
    "normalize_features": "--l2-normalize/--no-l2-normalize",
    "standardize_features": "--standardize-features/--raw-features",
    "warmup_steps": "--warmup",
}
# the smallest value of each whole-number setting
MINIMUM = {
    "prefix_length": 1,
    "epochs": 1,
    "batch_size": 1,
    "warmup_steps": 0,
    "grad_accum": 1,
    "max_tokens": 2,
    "save_every": 0,
    "keep_checkpoints": 1,
    "log_every": 0,
    "early_stop": 0,
    "retrieval_k": 1,
    "max_pixels": 1,
}


def flag(name: str) -> str:
    """The command-line option of setting ``name`` (``--lr``, ``--lang``, ...)."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass
class TrainSettings:
    """Everything a training run needs; recorded in every checkpoint and in the run folder.

    The fields are the settings file's keys; their command-line options are ``--<name>``
    with dashes, but for those in :data:`FLAGS`. ``None`` means "the default of the part that
    uses it" (the pack's LM, the format detected, the process's image limits, ...).
    """

    language: str = ""
    data: Path | None = None
    output: Path = Path("runs/polycap")
    # the caption data
    images_dir: Path | None = None
    data_format: str | None = None
    split: str | None = None  # split(s) of a split file (Karpathy's): "test", "train+restval"
    image_column: str | None = None
    caption_column: str | None = None
    allow_outside_images: bool | None = None
    max_pixels: int | None = None
    # the model
    encoder: str = "ViT-B-32"
    pretrained: str | None = "openai"
    lm: str | None = None
    mapper: str = "mlp"
    mapper_options: dict[str, Any] = field(default_factory=dict)
    prefix_length: int = 10
    train_lm: bool = False
    save_lm: bool = False
    normalize_features: bool = True
    standardize_features: bool = True
    stop_token: str | None = None  # ends captions instead of the pack's end token (e.g. ".")
    retrieval_bank: Path | None = None  # retrieval-augmented: prompts from this bank's kNN
    retrieval_k: int = 4  # captions per prompt
    # the optimisation
    epochs: int = 10
    batch_size: int = 32  # per process; the global batch is this × processes × grad_accum
    lr: float = 2e-5
    lr_schedule: str = "linear"  # transformers.get_scheduler's name
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_accum: int = 1
    precision: str = "fp32"
    max_tokens: int = 40
    val_fraction: float = 0.1
    seed: int = 0
    # checkpoints, selection, logging
    save_every: int = 0
    keep_checkpoints: int = 2
    eval_metrics: list[str] = field(default_factory=list)  # caption metrics on val, per epoch
    best_metric: str | None = None  # keep best/ by this validation score (train.selection)
    early_stop: int = 0  # stop after this many epochs without improvement (0: never)
    log_with: list[str] = field(default_factory=list)  # Accelerate trackers (train.trackers)
    log_every: int = 0  # a log line (and tracker values) every N optimizer steps; 0: epochs only
    # where it runs
    device: str = "auto"
    cache_dir: Path | None = None
    progress: bool = True

    # -- copies ------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        """A JSON-safe copy (for checkpoints and run.json)."""
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    def replace(self, **changes: Any) -> TrainSettings:
        return replace(self, **changes)

    # -- reading -----------------------------------------------------------------------------
    @classmethod
    def resolve(cls, *layers: Mapping[str, Any]) -> TrainSettings:
        """Settings from layers of values (each checked with :func:`checked_values`), later
        layers over earlier ones; mapper options merge, unless a later layer changes the
        mapper kind (its options then start afresh)."""
        values: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for layer in layers:
            layer = dict(layer)
            if "mapper" in layer and layer["mapper"] != values.get("mapper", layer["mapper"]):
                options = {}
            options.update(layer.pop("mapper_options", None) or {})
            values.update(layer)
        return cls(**values, mapper_options=options)

    @classmethod
    def from_run(cls, output: str | Path, **changes: Any) -> TrainSettings:
        """The settings saved in run folder ``output`` (``changes`` over them): what the
        Python API resumes with. BadInput when the folder has none."""
        saved = saved_settings(Path(output))
        if not saved:
            raise BadInput(f"{output}: no {SETTINGS_FILE} (not a run folder of this version)")
        return cls.resolve(saved, checked_values(changes, "settings"))

    # -- checking ----------------------------------------------------------------------------
    def validate(self) -> TrainSettings:
        """Check every value on its own (no plugins needed); BadInput, one line naming the
        option, for the first that is wrong. Returns ``self``."""
        if not self.language:
            raise BadInput("missing option --lang (or language = ... in the --config file)")
        if self.data is None or not str(self.data):
            raise BadInput("missing option --data (or data = ... in the --config file)")
        _check_number("lr", self.lr)  # 0 trains nothing, which tests of a plateau want
        _check_number("weight_decay", self.weight_decay)
        _check_number("val_fraction", self.val_fraction, most=0.9)
        for name, least in MINIMUM.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise BadInput(f"{flag(name)} {value}: must be at least {least}")
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        if self.retrieval_bank is not None and self.eval_metrics:
            raise BadInput(
                "--eval-metrics does not yet caption with retrieval prompts; "
                "leave it out with --retrieval-bank (validation loss is recorded)"
            )
        return self

    # -- writing -----------------------------------------------------------------------------
    def to_toml(self) -> str:
        """The settings as a settings file: what ``--dry-run`` prints and the run folder
        keeps (local paths absolute, so it resumes from any folder)."""
        import tomli_w

        record: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in NOT_SAVED or item.name in ("mapper", "mapper_options"):
                continue
            if value is None:
                if item.default is not None:  # say "none" where None is not the default
                    record[item.name] = "none"
                continue
            record[item.name] = _portable(item.name, value)
        record["mapper"] = {"kind": self.mapper, **self.mapper_options}
        return tomli_w.dumps(record)


def _check_number(name: str, value: Any, most: float | None = None) -> None:
    """A finite number of at least 0 (and at most ``most``)."""
    number = float(value)
    if not math.isfinite(number) or number < 0 or (most is not None and number > most):
        wanted = "a number of at least 0"
        if most is not None:
            wanted += f" and at most {most}"
        raise BadInput(f"{flag(name)} {value}: must be {wanted}")


def _check_choice(name: str, value: str, choices: Any) -> None:
    if value not in choices:
        raise BadInput(f"{flag(name)} {value}: unknown; choose one of {', '.join(choices)}")


PATHS = ("data", "output", "images_dir", "retrieval_bank", "cache_dir")
MAYBE_PATHS = ("lm", "pretrained")  # a hub id / tag, or a local path


def _portable(name: str, value: Any) -> Any:
    """A value as the saved file holds it: paths absolute, local LM / weights paths too."""
    if name in PATHS:
        return str(Path(value).expanduser().absolute())
    if name in MAYBE_PATHS and Path(str(value)).expanduser().exists():
        return str(Path(str(value)).expanduser().absolute())
    return value


# -- values from a file or the command line ----------------------------------------------------
def _kinds() -> dict[str, tuple[str, bool]]:
    """Field name -> (base type, whether None is allowed), from the annotations."""
    found = {}
    for item in fields(TrainSettings):
        text = str(item.type)
        found[item.name] = (text.replace(" | None", ""), "| None" in text)
    return found


def checked_values(values: Mapping[str, Any], source: str) -> dict[str, Any]:
    """``values`` (from a settings file or code) as settings fields: names known, each of its
    setting's type (an int for a float, a string for a path, ``"a,b"`` for a list; ``"none"``
    for an optional text); ``[mapper]`` a table of ``kind`` and options. BadInput naming
    ``source`` and the key otherwise."""
    kinds = _kinds()
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key == "mapper" and isinstance(value, Mapping):
            table = dict(value)
            if "kind" in table:
                checked["mapper"] = _typed(source, "mapper.kind", table.pop("kind"), ("str", False))
            checked["mapper_options"] = table
            continue
        if key not in kinds:
            close = _meant(key, list(kinds))
            hint = f" (did you mean {close!r}?)" if close else ""
            raise BadInput(f"{source}: unknown setting {key!r}{hint}")
        checked[key] = _typed(source, key, value, kinds[key])
    return checked


ALIASES = {"learning_rate": "lr", "lr_scheduler": "lr_schedule"}


def _meant(key: str, names: list[str]) -> str | None:
    """The setting a wrong key most likely means: its command-line spelling (``lang``,
    ``warmup``), a common other name (``learning_rate``), or a close spelling."""
    wanted = key.replace("-", "_").lower()
    by_flag = {flag(name).split("/")[0].lstrip("-").replace("-", "_"): name for name in names}
    if wanted in by_flag or wanted in ALIASES or wanted in names:
        return by_flag.get(wanted) or ALIASES.get(wanted) or wanted
    close = difflib.get_close_matches(wanted, names, n=1)
    return close[0] if close else None


def _typed(source: str, key: str, value: Any, kind: tuple[str, bool]) -> Any:
    base, optional = kind
    if optional and (value is None or (base == "str" and str(value).lower() == "none")):
        return None
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "float": isinstance(value, (int, float)) and not isinstance(value, bool),
        "Path": isinstance(value, (str, Path)),
        "list[str]": isinstance(value, str)
        or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
        "dict[str, Any]": isinstance(value, Mapping),
    }.get(base, True)
    if not ok:
        wanted = {"list[str]": "a list of names", "dict[str, Any]": "a table"}.get(base, base)
        raise BadInput(f"{source}: {key} = {value!r}: expected {wanted}")
    if base == "Path":
        return Path(value)
    if base == "float":
        return float(value)
    if base == "list[str]" and isinstance(value, str):
        return [name.strip() for name in value.split(",") if name.strip()]
    if base == "dict[str, Any]":
        return dict(value)
    return value


def read_settings_file(path: Path) -> dict[str, Any]:
    """The checked values of a TOML settings file; relative paths in it are relative to its
    folder. One line for a missing file, bad TOML, an unknown key or a wrong type."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise BadInput(f"--config {path}: unreadable ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise BadInput(f"--config {path}: not valid TOML ({error})") from None
    values = checked_values(raw, str(path))
    folder = path.parent
    for key in PATHS:
        if values.get(key) is not None:
            values[key] = folder / Path(values[key]).expanduser()
    for key in MAYBE_PATHS:
        local = folder / str(values.get(key))
        if values.get(key) is not None and not Path(values[key]).is_absolute() and local.exists():
            values[key] = str(local)
    return values


def saved_settings(output: Path) -> dict[str, Any]:
    """The checked values of the settings saved in run folder ``output``; {} when none."""
    path = Path(output) / SETTINGS_FILE
    return read_settings_file(path) if path.is_file() else {}


def write_settings(settings: TrainSettings, folder: Path) -> Path:
    """Save ``settings`` as the run folder's settings file (atomically)."""
    from polycap.util.atomic import write_text

    return write_text(Path(folder) / SETTINGS_FILE, settings.to_toml())


def parse_mapper_options(items: list[str]) -> dict[str, Any]:
    """``["num_layers=4", "dropout=0.1", "act=gelu"]`` -> ``{"num_layers": 4, "dropout": 0.1,
    "act": "gelu"}``: each value read as a TOML value (number, true/false, "text"), else as
    text. BadInput for an item without ``=``."""
    import sys

    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib

    options: dict[str, Any] = {}
    for item in items:
        key, equals, text = item.partition("=")
        if not equals or not key.strip():
            raise BadInput(f"--mapper-option {item}: expected NAME=VALUE, e.g. num_layers=4")
        try:
            options[key.strip()] = tomllib.loads(f"value = {text.strip()}")["value"]
        except tomllib.TOMLDecodeError:
            options[key.strip()] = text.strip()
    return options


# -- checks that need the plugins ---------------------------------------------------------------
def check_settings(settings: TrainSettings, registries: Registries) -> Selection | None:
    """Everything about ``settings`` that can be known before any work: the values
    (:meth:`TrainSettings.validate`), the language, the mapper and its option names, the
    metrics, the trackers and the best metric (computable here). Returns the run's
    best-epoch keeper (None without ``--best-metric`` / ``--early-stop``)."""
    from polycap.eval.runner import check_metrics
    from polycap.train.selection import make_selection
    from polycap.train.trackers import check_trackers

    settings.validate()
    pack = registries.languages.get(settings.language)
    check_mapper_options(settings, registries)
    check_metrics(settings.eval_metrics, registries)
    check_trackers(settings.log_with)
    return make_selection(settings, registries, pack)


def check_mapper_options(settings: TrainSettings, registries: Registries) -> None:
    """The mapper kind is registered and takes each option by name (unless it takes any)."""
    import inspect

    built = registries.mappers.get(settings.mapper)
    target = getattr(built, "cls", built)  # built-in mappers register a stand-in
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # not introspectable: its constructor will say
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return
    known = [name for name in parameters if name not in ("clip_dim", "lm_dim", "prefix_length")]
    for name in settings.mapper_options:
        if name not in known:
            takes = ", ".join(known) or "no options"
            raise BadInput(
                f"--mapper-option {name}: the {settings.mapper} mapper has no such option "
                f"(it takes: {takes})"
            )
