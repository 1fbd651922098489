"""docs/writing-a-language-pack.md holds: the conformance suite's test count is stated the same
everywhere and every test is in its table; the retrieval prompt fields are in the guide, the
scaffold and a generated pack; the worked offline own-data example runs as written."""

from __future__ import annotations

import csv
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "writing-a-language-pack.md"
WORDS = {"eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12}


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def suite_tests() -> list[str]:
    """The conformance tests one pack runs (the English pack's, as pytest collects them)."""
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_conformance_en.py")],
        capture_output=True, text=True, check=False, cwd=ROOT,
    )  # fmt: skip
    return [
        line.split("::")[-1]
        for line in result.stdout.splitlines()
        if "::TestEnglishConformance::" in line
    ]


def test_the_suite_size_is_stated_once_and_right() -> None:
    tests = suite_tests()
    assert len(tests) == 10, tests
    text = guide()
    stated = [int(n) for n in re.findall(r"\b(\d+) (?:conformance )?tests\b", text)]
    stated += [WORDS[w.lower()] for w in re.findall(r"\b(\w+) tests in all\b", text)]
    assert stated and set(stated) == {len(tests)}, stated
    for test in tests:
        assert f"`{test}`" in text, f"{test} missing from the guide's table"


def test_the_prompt_fields_are_in_the_guide_the_scaffold_and_a_new_pack(tmp_path) -> None:
    from polycap.plugin_install import new_pack

    text = guide()
    assert "`retrieval_prompt`" in text and "`caption_separator`" in text
    made = new_pack("uk", "Ukrainian", tmp_path / "pack")
    pack_py = (made.directory / made.module / "pack.py").read_text(encoding="utf-8")
    assert "retrieval_prompt=" in pack_py and "caption_separator=" in pack_py
    readme = (made.directory / "README.md").read_text(encoding="utf-8")
    assert "retrieval_prompt" in readme and "own captions" in readme


def test_the_suite_checks_the_prompt() -> None:
    import dataclasses

    from polycap.builtin.english import ENGLISH
    from polycap.testing import check_pack_fields

    check_pack_fields(ENGLISH)
    for broken in ({"retrieval_prompt": "no place for them"}, {"caption_separator": ""}):
        with pytest.raises(AssertionError, match="retrieval_prompt|caption_separator"):
            check_pack_fields(dataclasses.replace(ENGLISH, **broken))


def example_blocks() -> tuple[str, list[list[str]]]:
    """The own-data example: its Python block and its ``polycap`` commands (split)."""
    text = guide().split("<!-- own-data example", 1)[1]
    python = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    shell = re.search(r"```bash\n(.*?)```", text, re.S).group(1).replace("\\\n", " ")
    commands = [shlex.split(line) for line in shell.splitlines() if line.startswith("polycap ")]
    return python, commands


@pytest.mark.slow
def test_the_own_data_example_runs_as_written(tmp_path, monkeypatch, capsys) -> None:
    """English stands in for the guide's Ukrainian pack; two epochs instead of twenty."""
    from polycap.builtin.english import ENGLISH
    from polycap.offline.synthetic import make_synthetic_set

    split = make_synthetic_set(ENGLISH, tmp_path / "synthetic", 40, seed=0)
    (tmp_path / "photos").symlink_to(split.image_dir)
    with open(tmp_path / "captions.csv", "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        for record in json.loads(split.train_file.read_text(encoding="utf-8")):
            writer.writerow([record["image_name"], record["caption"]])
    python, commands = example_blocks()
    assert [c[:2] for c in commands] == [["polycap", "train"], ["polycap", "caption"]]
    monkeypatch.chdir(tmp_path)
    exec(compile(python.replace('get("uk")', 'get("en")'), "make_models.py", "exec"), {})
    assert Path("models/clip/polycap-tiny-vit-seed0.pt").is_file()
    train = [a if a != "uk" else "en" for a in commands[0][1:]]
    train[train.index("--epochs") + 1] = "2"
    result = run_cli([*train, "--device", "cpu", "--batch-size", "16", "--json"], capsys)
    assert result.code == 0, result.err
    result = run_cli([*commands[1][1:], "--device", "cpu", "--json"], capsys)
    assert result.code == 0, result.err
    captions = json.loads(result.out)["captions"]
    assert len(captions) == len(list(split.image_dir.iterdir()))
    assert all(item["captions"][0] for item in captions)
