"""Atomic writes and folder swaps (polycap.atomic): the old state survives a failed write."""

from __future__ import annotations

from pathlib import Path

import pytest

from polycap.atomic import atomic_file, atomic_folder, write_json, write_text


def test_failed_file_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_file(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_json_is_utf8_and_replaces(tmp_path: Path) -> None:
    target = write_json(tmp_path / "a.json", ["赤い円"])
    write_json(target, {"caption": "красный круг"})
    assert target.read_text(encoding="utf-8") == '{\n "caption": "красный круг"\n}'


def test_folder_swap_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "bank"
    with atomic_folder(target) as work:
        (work / "one").write_text("1")
    with pytest.raises(RuntimeError), atomic_folder(target) as work:
        (work / "two").write_text("2")
        raise RuntimeError("killed")
    assert [p.name for p in target.iterdir()] == ["one"]
    with atomic_folder(target) as work:
        (work / "two").write_text("2")
    assert [p.name for p in target.iterdir()] == ["two"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bank"]
