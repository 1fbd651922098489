"""Atomic writes and folder swaps (polycap.util.atomic): the old state survives a failed write."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from polycap.util.atomic import atomic_file, atomic_folder, write_json, write_text


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


def test_writability_is_checked_with_one_line_naming_the_option(tmp_path: Path) -> None:
    from polycap.errors import BadInput
    from polycap.util.atomic import check_writable_file, check_writable_folder

    a_file = write_text(tmp_path / "taken", "x")
    with pytest.raises(BadInput, match=f"^--output {a_file}: is a file, not a folder$"):
        check_writable_folder(a_file, "--output")
    with pytest.raises(BadInput, match=f"^--report {tmp_path}: is a folder, not a file$"):
        check_writable_file(tmp_path, "--report")
    below = a_file / "sub" / "report.html"
    with pytest.raises(BadInput, match=f"^--report {below}: {a_file} is a file, not a folder$"):
        check_writable_file(below, "--report")
    assert check_writable_folder(tmp_path / "new" / "bank", "--output") == tmp_path / "new" / "bank"
    assert not (tmp_path / "new").exists()  # checking creates nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path: Path) -> None:
    from polycap.errors import BadInput
    from polycap.util.atomic import check_writable_file

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(BadInput, match="cannot write in"):
            check_writable_file(locked / "report.html", "--report")
    finally:
        locked.chmod(0o700)
