"""Atomic writes: a file or a folder is either the old one or the complete new one, never half.

Files go through a temporary file beside the target and ``os.replace``; folders are written
into a temporary folder beside the target, then swapped into place (the old folder renamed
aside first, removed after).

What lands honours the umask, as a plain ``open`` and ``mkdir`` would: files 0666 & ~umask
(0644 under umask 022), folders 0777 & ~umask (0755). ``tempfile`` makes its files 0600 and
its folders 0700 (and some writers, safetensors among them, write 0600 files of their own), so
a file is given its mode before it replaces the target, and a folder's whole tree before it is
swapped into place; a shared model store or another user can then read what polycap wrote.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process's umask: from /proc on Linux (nothing changes), else by setting it and
    setting it back (Python has no getter)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(executable: bool = False) -> int:
    """The mode a new file gets under the umask: 0666 & ~umask (0777 for an executable)."""
    return (0o777 if executable else 0o666) & ~current_umask()


def honour_umask(path: Path) -> None:
    """Give ``path`` (a file, or a folder and everything in it) the modes a plain ``open`` /
    ``mkdir`` would have given it under the umask; executables stay executable."""
    mask = current_umask()
    path = Path(path)
    if not path.is_dir():
        os.chmod(path, _mode_for(path, mask))
        return
    os.chmod(path, 0o777 & ~mask)
    for root, folders, files in os.walk(path):
        for name in folders:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file) and os.stat(file).st_nlink == 1:  # not a hard link's
                os.chmod(file, _mode_for(Path(file), mask))  # source: another folder's file


def _mode_for(path: Path, mask: int) -> int:
    executable = bool(os.stat(path).st_mode & 0o100)
    return (0o777 if executable else 0o666) & ~mask


@contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, else it goes."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def replace_file(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically, with plain strings only.

    For writers of many small files (the feature cache): every name pathlib parses goes into
    the interpreter's table of interned strings, whose resizes show in a long run's peak memory.
    """
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=directory or ".", prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
        os.chmod(temporary, file_mode())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_bytes(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_file(path) as temporary:
        temporary.write_bytes(data)
    return path


def write_text(path: Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, data: Any, indent: int | None = 1) -> Path:
    """Write ``data`` as UTF-8 JSON (non-ASCII kept as is) to ``path`` atomically."""
    return write_text(path, json.dumps(data, ensure_ascii=False, indent=indent))


def temporary_folder(target: Path) -> Path:
    """A new empty folder beside ``target`` (``.<name>.tmp-XXXX``) to write it in."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def swap_into_place(work: Path, target: Path) -> Path:
    """Rename the finished folder ``work`` to ``target``, replacing a folder already there
    (``work``'s tree given the umask's modes first: :func:`honour_umask`)."""
    honour_umask(work)
    if target.exists():
        old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, old)
        os.replace(work, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(work, target)
    return target


def remove_leftovers(target: Path) -> list[Path]:
    """Remove what a killed writer of ``target`` left beside it: its temporary folders
    (``.<name>.tmp-…``), and an old folder renamed aside (``.<name>.old-…``), put back when
    the swap was cut before the new one arrived. Only while holding ``target``'s lock
    (:func:`polycap.util.run_lock.writing`): another live writer's folders look the same."""
    import glob

    target = Path(target)
    if not target.parent.is_dir():
        return []
    name = glob.escape(target.name)
    removed = []
    for leftover in sorted(target.parent.glob(f".{name}.old-*")):
        if leftover.is_dir() and not target.exists():
            os.replace(leftover, target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
        removed.append(leftover)
    for leftover in sorted(target.parent.glob(f".{name}.tmp-*")):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it becomes ``target``."""
    work = temporary_folder(target)
    try:
        yield work
        swap_into_place(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


# -- copies ----------------------------------------------------------------------------------

FICLONE = 0x40049409  # Linux ioctl: the target shares the source's blocks copy-on-write


def copy_file(source: Path, target: Path) -> Path:
    """An independent copy of ``source`` at ``target``: never a hard link, so writing into
    either never changes the other. Where the file system can (btrfs, XFS), the copy shares
    blocks copy-on-write (a reflink: instant, no extra space until one side changes)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: a plain copy
        fcntl = None  # type: ignore[assignment]
    if fcntl is not None:
        with open(source, "rb") as src, open(target, "wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                return Path(target)
            except OSError:  # not supported here: copy the bytes below
                pass
    shutil.copyfile(source, target)
    return Path(target)


def copy_tree(source: Path, target: Path) -> Path:
    """An independent copy of the folder ``source`` at ``target`` (:func:`copy_file` for each
    file; symbolic links are copied as the files they lead to)."""
    return Path(shutil.copytree(source, target, copy_function=copy_file))


# -- writability, checked before long work ---------------------------------------------------


def check_writable_file(path: Path, option: str) -> Path:
    """BadInput (one line naming ``option`` and ``path``) unless a file can be written at
    ``path``: not a folder, and its folder exists or can be made, and takes new files."""
    from polycap.errors import BadInput

    path = Path(path)
    if path.is_dir():
        raise BadInput(f"{option} {path}: is a folder, not a file")
    _check_folder_takes_files(path.parent, option, path)
    return path


def check_writable_folder(path: Path, option: str) -> Path:
    """BadInput (one line naming ``option`` and ``path``) unless ``path`` is, or can be made
    as, a folder that takes new files."""
    from polycap.errors import BadInput

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise BadInput(f"{option} {path}: is a file, not a folder")
    _check_folder_takes_files(path if path.is_dir() else path.parent, option, path)
    return path


def _check_folder_takes_files(folder: Path, option: str, named: Path) -> None:
    """Try a temporary file in ``folder`` (or in its nearest existing parent when it does
    not exist yet): the only test that sees read-only mounts, quotas and permissions alike."""
    from polycap.errors import BadInput

    existing = Path(os.path.abspath(folder))
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise BadInput(f"{option} {named}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing, prefix=".polycap-write-check-"):
            pass
    except OSError as error:
        raise BadInput(
            f"{option} {named}: cannot write in {existing} ({error.strerror or error})"
        ) from None


# -- replacing a user's file beside itself ---------------------------------------------------

TEMP_MARK = ".polycap-"  # temporary copies are named .NAME.polycap-XXXX.tmp


def new_file_mode() -> int:
    """The permissions a new file gets here (0o666 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def replace_beside(
    path: Path,
    data: bytes,
    mode: int | None = None,
    times_ns: tuple[int, int] | None = None,
    before_replace: Any = None,
    durable: bool = True,
) -> None:
    """Write ``data`` to ``.NAME.polycap-XXXX.tmp`` beside ``path``, give it ``mode`` (default:
    a new file's) and, when given, the (atime, mtime) ``times_ns``, flush it to disk and rename
    it over ``path``. ``before_replace(temporary)`` runs just before the rename (tests pause
    there). A reader, or a process killed at any moment, sees the old file or the new one;
    ``durable`` also flushes the copy to disk first (a power cut then leaves one of the two as
    well; off for files that can be made again, such as sidecars: it costs a disk flush each)."""
    path = Path(path)
    prefix = f".{path.name}{TEMP_MARK}"
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=".tmp")
    temporary = Path(name)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            if durable:
                stream.flush()
                os.fsync(stream.fileno())
        os.chmod(temporary, new_file_mode() if mode is None else mode)
        if times_ns is not None:
            os.utime(temporary, ns=times_ns)
        if before_replace is not None:
            before_replace(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
