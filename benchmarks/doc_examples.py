"""The example sessions in docs/retrieval.md and docs/evaluation.md, run for real.

Each example is a sequence of ``polycap`` commands run in fresh processes in a scratch folder
(synthetic images, the tiny open_clip model; nothing downloaded); their output is pasted into
the docs between ``<!-- bench:NAME -->`` markers (the writer of :mod:`benchmarks.report`, with
the commit and machine)::

    python -m benchmarks.doc_examples               # retrieval and predictions-file examples
    python -m benchmarks.doc_examples --with-model  # also train the tiny English captioner
                                                    # (600 images, 20 epochs) for the
                                                    # checkpoint examples: a few minutes

Timings in the outputs (ms, captions/s) are those of the machine that ran it.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from benchmarks import report

RETRIEVAL_DOC = report.ROOT / "docs" / "retrieval.md"
EVALUATION_DOC = report.ROOT / "docs" / "evaluation.md"


class Session:
    """Commands run in ``workdir`` as a user would type them, with what they printed."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.lines: list[str] = []
        paths = [str(report.ROOT), *(p for p in sys.path if p)]
        self.env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(paths),
            "COLUMNS": "160",
            "NO_COLOR": "1",
            "TERM": "dumb",
        }

    def run(self, *args: str, stdout_to: str | None = None, shown: str | None = None) -> str:
        command = [sys.executable, "-m", "polycap", *args]
        done = subprocess.run(
            command, cwd=self.workdir, env=self.env, capture_output=True, text=True
        )
        typed = shown or shlex.join(["polycap", *args])
        if stdout_to is not None:
            (self.workdir / stdout_to).write_text(done.stdout, encoding="utf-8")
            typed += f" > {stdout_to}"
            output = done.stderr
        else:
            output = done.stdout + done.stderr
        output = output.replace(f"{self.workdir}{os.sep}", "")  # paths as typed: relative
        kept = [line for line in output.rstrip().splitlines() if not line.startswith("Warning")]
        self.lines += [f"$ {typed}", *kept]
        return done.stdout

    def text(self) -> str:
        return "```text\n" + "\n".join(self.lines) + "\n```"


def chinese_examples(workdir: Path) -> tuple[str, str, str]:
    """(retrieval example, predictions-file example, matching-errors example) on 200
    synthetic Chinese images."""
    from polycap.offline import tiny
    from polycap.offline.synthetic import make_synthetic_set
    from polycap.plugins import get_registries

    pack = get_registries().languages.get("zh")
    split = make_synthetic_set(pack, workdir / "data", 200, seed=0)
    name, weights = tiny.build_clip(workdir / "clip", seed=0)
    clip = ["--encoder", name, "--pretrained", str(weights.relative_to(workdir))]
    tests = sorted(p.name for p in split.image_dir.glob("test_*.png"))
    first, second = (f"data/images/{n}" for n in tests[:2])

    retrieval = Session(workdir)
    retrieval.run("index", "data/train_captions.json", "--lang", "zh", "--output", "bank", *clip)
    retrieval.run("retrieve", first, second, "--bank", "bank", "--mode", "image", "--k", "3")
    retrieval.run("retrieve", first, "--bank", "bank", "--mode", "image", "--consensus", "--k", "2")

    scoring = Session(workdir)
    images = [f"data/images/{n}" for n in tests]
    retrieved = scoring.run(
        "retrieve",
        *images,
        "--bank",
        "bank",
        "--mode",
        "image",
        "--consensus",
        "--k",
        "1",
        "--json",
        stdout_to="retrieved.json",
        shown="polycap retrieve data/images/test_*.png --bank bank --mode image --consensus "
        "--k 1 --json",
    )
    json.loads(retrieved)  # the predictions file is valid JSON
    scoring.run(
        "eval",
        "data/test_captions.json",
        "-p",
        "retrieved.json",
        "--lang",
        "zh",
        "--clip-encoder",
        name,
        "--clip-pretrained",
        str(weights.relative_to(workdir)),
    )

    errors = Session(workdir)
    errors.run(
        "retrieve", "data/images", "--bank", "bank", "--k", "1", "--json", stdout_to="all.json"
    )
    errors.run("eval", "data/test_captions.json", "-p", "all.json", "--lang", "zh")
    errors.run("eval", "data/test_captions.json", "-p", "all.json", "--lang", "jp")
    return retrieval.text(), scoring.text(), errors.text()


def model_examples(workdir: Path) -> tuple[str, str]:
    """(compare example, eval --model example): the tiny English captioner trained on the
    compositional split of :mod:`benchmarks.compositional` (seed 0)."""
    from benchmarks.compositional import run_split

    run_split(workdir, seed=0)
    compare = Session(workdir)
    compare.run(
        "compare",
        "data/test_captions.json",
        "--model",
        "run/final",
        "--bank",
        "compare/bank",
        "--report",
        "compare.html",
        "--device",
        "cpu",
    )
    evaluation = Session(workdir)
    evaluation.run("eval", "data/test_captions.json", "--model", "run/final", "--device", "cpu")
    return compare.text(), evaluation.text()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--with-model", action="store_true", help="Also the checkpoint examples.")
    args = parser.parse_args(argv)
    command = "python -m benchmarks.doc_examples" + (" --with-model" if args.with_model else "")
    with tempfile.TemporaryDirectory(prefix="polycap-doc-examples-") as directory:
        retrieval, scoring, errors = chinese_examples(Path(directory) / "zh")
        report.write([report.Section("example-retrieval", retrieval)], command, RETRIEVAL_DOC, None)
        report.write(
            [
                report.Section("example-predictions", scoring),
                report.Section("example-matching-errors", errors),
            ],
            command,
            EVALUATION_DOC,
            None,
        )
        if args.with_model:
            compare, evaluation = model_examples(Path(directory) / "en")
            report.write([report.Section("example-compare", compare)], command, RETRIEVAL_DOC, None)
            report.write(
                [report.Section("example-checkpoint", evaluation)], command, EVALUATION_DOC, None
            )
    print(f"wrote {RETRIEVAL_DOC} and {EVALUATION_DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
