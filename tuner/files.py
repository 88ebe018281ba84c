"""Atomic file writes with ordinary permissions: every report, data file, config and cache tuner writes goes
through here. Also `decode_utf8`, the one way tuner reads a whole text file it must name a bad byte's line in.

A temporary file (or folder) in the target's folder, then a rename, so that readers never see half a file and an
interrupted run leaves the previous version. `tempfile` creates its files 0600 and folders 0700 whatever the
umask, and a rename keeps that mode, so each result is given the mode a plain `open()` / `mkdir()` would have
(0666 / 0777 less the umask): run folders stay shareable, as the standard library's `open` leaves them.
(The standard library has no atomic write; this is the one place that does it.)
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = [
    "atomic_dir",
    "atomic_open",
    "atomic_path",
    "atomic_write",
    "decode_utf8",
    "default_mode",
    "make_output_dir",
    "removed_if_failed",
]


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def lock_exclusive(fd: int) -> bool:
    """Take an advisory exclusive `flock` on `fd` without waiting: False when another process holds one (the kernel
    drops a lock with its process however it ends, so a lock is never stale). An `OSError` other than that (a file
    system without locks: ENOLCK on some network mounts) is left to the caller, which may go on unguarded. Without
    `fcntl` (not POSIX) nothing is locked: True."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover (not POSIX)
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def decode_utf8(raw: bytes, where: str | Path, error: type[Exception] = ValueError) -> str:
    """`raw` as text, a leading BOM dropped; a byte that is not UTF-8 raises
    `error("<where>:<line>: not UTF-8 text (<reason>)")`."""
    body = raw.removeprefix(codecs.BOM_UTF8)
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as err:
        line = body[: err.start].count(b"\n") + 1
        raise error(f"{where}:{line}: not UTF-8 text ({err.reason}){utf16_hint(raw)}") from None


def utf16_hint(start: bytes) -> str:
    """ "; the file is UTF-16 ..." when `start` (a file's first bytes) opens with a UTF-16 byte-order mark, as a
    spreadsheet's "Unicode text" export does; "" otherwise."""
    if start.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "; the file is UTF-16 (it starts with a UTF-16 byte-order mark): save it as UTF-8"
    return ""


def similar_names(path: str | Path, n: int = 3, *, folders_only: bool = False) -> list[Path]:
    """Entries beside `path` whose names resemble its name, best first, for "did you mean" hints; hidden entries
    are left out. Names are compared without their suffixes (difflib ratio of the stems, cutoff 0.6, then of the
    whole names): "trian" and "train.jsnol" find train.jsonl, while "nope.jsonl" does not find dev.jsonl for the
    ".jsonl" they share."""
    import difflib

    folder = Path(path).expanduser().parent
    try:
        entries = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        return []
    names = [e.name for e in entries if not e.name.startswith(".") and (e.is_dir() or not folders_only)]
    wanted = Path(path).name

    def stem(name: str) -> str:
        return name.split(".")[0] or name

    scored = []
    for name in names:
        by_stem = difflib.SequenceMatcher(None, stem(wanted), stem(name)).ratio()
        if by_stem >= 0.6:
            scored.append((-by_stem, -difflib.SequenceMatcher(None, wanted, name).ratio(), name))
    return [folder / name for *_, name in sorted(scored)[:n]]


def check_output_file(path: str | Path, flag: str) -> None:
    """Raise `ValueError` naming `flag` if a file could not be written at `path`: it is a folder, a parent is a
    file, or the nearest existing folder is not writable. For commands that work long before they write."""
    path = Path(path).expanduser().absolute()
    if path.is_dir():
        raise ValueError(f"{flag} {path} is a folder; give the path of a file, in it or elsewhere")
    _check_writable_in(path.parent, path, flag)


def _check_writable_in(folder: Path, path: Path, flag: str, why: str = "") -> None:
    """`folder` (or its nearest existing ancestor) must be a folder this process can create `path` in."""
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"{flag} {path}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"{flag} {path}: no permission to write in {folder}{why}")


def check_output_dir(path: str | Path, flag: str, overwrite: bool | None = None, replaced: bool = False) -> None:
    """Raise `ValueError` naming `flag` if a folder could not be written at `path`: it is a file, a parent is a
    file, or the nearest existing folder is not writable. With `overwrite=False`, a folder that already holds
    files is refused too (the caller's `--overwrite` replaces it). `replaced=True`: the folder is written by
    `atomic_dir`, beside `path` and renamed into place, so an existing `path` needs a writable parent too."""
    path = Path(path).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise ValueError(f"{flag} {path} is a file, not a folder")
    if path.is_dir() and overwrite is False and any(path.iterdir()):
        names = sorted(p.name for p in path.iterdir())
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise ValueError(f"{flag} {path} already holds files ({shown}); choose another folder or pass --overwrite")
    _check_writable_in(path if path.is_dir() else path.parent, path, flag)
    if replaced and path.is_dir():
        why = " (the new folder is written beside it and renamed into place)"
        _check_writable_in(path.parent, path, flag, why)


def make_output_dir(path: str | Path, flag: str) -> Path:
    """Create the folder `path` (and its parents) for a command's outputs and check that a file can be written in
    it; returns `path`. Every failure is a `ValueError` naming `flag` and the folder at fault (a file where a
    folder is wanted, no permission, a read-only or full disk), not the OS's bare errno: `check_output_dir`'s
    checks first, then the creation itself (which also catches what they cannot see, e.g. a read-only mount)."""
    check_output_dir(path, flag)
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as err:
        raise ValueError(output_error(err, Path(path).absolute(), flag)) from None
    return Path(path)


@contextmanager
def removed_if_failed(path: str | Path) -> Iterator[Path]:
    """Around a command that makes the output folder `path` (`make_output_dir`) and may then fail on its inputs:
    on failure, the folders of `path` that did not exist on entry and are still empty are removed (the deepest
    first), so a failed run leaves no empty folder behind. A folder that existed before, or holds anything, is
    never removed. Yields `path` as given."""
    made = []
    folder = Path(path).absolute()
    while not os.path.lexists(folder) and folder != folder.parent:
        made.append(folder)
        folder = folder.parent
    try:
        yield Path(path)
    except BaseException:
        for folder in made:
            try:
                folder.rmdir()
            except FileNotFoundError:  # not made (the command failed before): its parent may have been
                continue
            except OSError:  # not empty (or not ours to remove): nor are the folders above it
                break
        raise


def output_error(err: OSError, path: str | Path, flag: str, file: bool = False) -> str:
    """One line naming `flag`, `path` and what is wrong, for an `OSError` met writing the output `path` (a folder,
    or with `file=True` a file, which may exist: it is being replaced)."""
    import errno

    path = Path(path)
    folder = path.parent if file else path
    while not folder.is_dir() and folder != folder.parent:  # the nearest folder that exists
        if folder.exists():
            where = f"{flag} {path}" if folder == path else f"{flag} {path}: {folder}"
            return f"{where} is a file, not a folder"
        folder = folder.parent
    if err.errno in (errno.EACCES, errno.EPERM):
        return f"{flag} {path}: no permission to write in {folder}"
    if err.errno == errno.EROFS:
        return f"{flag} {path}: {folder} is on a read-only file system"
    reason = (err.strerror or str(err)).lower()
    return f"{flag} {path}: cannot write in {folder} ({reason})"


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, which another thread could see)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def json_error_reason(err: json.JSONDecodeError) -> str:
    """The json module's message without its dangling " at" ("Unterminated string starting at", "Invalid control
    character at": it prints the position after them), for a message that gives the place its own way."""
    return err.msg.removesuffix(" at")


def json_error_place(doc: str, err: json.JSONDecodeError) -> tuple[int, int]:
    """(line, column), from 1, of a JSON syntax error in `doc`. The parser stops at the next token, so a comma or
    bracket missing at the end of a line is reported at the start of the next line (or, for a JSONL line read
    with its newline, at a column past the text); such an error is placed right after the last character before
    the line break instead; so is an error at the end of the text (a truncated file). Any other error stays at
    the token the parser refused. Written by hand: the json module has no other notion of where a value ended."""
    pos = min(err.pos, len(doc))
    missing = err.msg.startswith(("Expecting ',' delimiter", "Expecting ':' delimiter")) or not doc[pos:].strip()
    back = pos
    while back > 0 and doc[back - 1] in " \t\r\n":
        back -= 1
    if missing and ("\n" in doc[back:pos] or pos == len(doc)):
        pos = back
    line_start = doc.rfind("\n", 0, pos) + 1
    return doc.count("\n", 0, pos) + 1, pos - line_start + 1


def default_mode(directory: bool = False) -> int:
    """The mode `open()` (0666) or `mkdir()` (0777) gives a new file or folder under the current umask."""
    return (0o777 if directory else 0o666) & ~_umask()


def usual_modes(folder: str | Path) -> Path:
    """Give `folder` and everything in it the mode a plain open()/mkdir() would (`default_mode`). Written by hand:
    safetensors (and tempfile, which atomic writers use) create files 0600, which leaves weights that another user
    of the machine (a serving account, a shared cache) cannot read. Returns the folder."""
    folder = Path(folder)
    for item in (folder, *folder.rglob("*")):
        if not item.is_symlink():
            item.chmod(default_mode(item.is_dir()))
    return folder


@contextmanager
def atomic_path(path: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary path next to `path` to write to (e.g. `savefig(tmp)`); renamed onto `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(default_mode())
        try:
            os.replace(tmp, path)
        except OSError as err:  # named by the file written, not "[Errno 21] Is a directory: '.x.1a2b.tmp' -> 'x'"
            raise type(err)(err.errno, err.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_figure(fig, path: str | Path) -> Path:
    """A matplotlib figure written atomically as a PNG, then closed (pyplot keeps every figure it made alive)."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp, format="png")
    finally:
        plt.close(fig)
    return path


@contextmanager
def atomic_open(path: str | Path, mode: str = "w") -> Iterator[IO]:
    """`open(path, mode)` ("w" text in UTF-8, or "wb") that lands whole on `path` on success, or not at all."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', not {mode!r}")
    with atomic_path(path) as tmp:
        encoding = None if "b" in mode else "utf-8"
        with open(tmp, mode, encoding=encoding) as f:
            yield f


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` atomically; returns the path."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


def _owner_tag() -> str:
    """`HOST-PID` of this process, in the name of the temporary folders `atomic_dir` makes."""
    import socket

    host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname()) or "host"
    return f"{host}-{os.getpid()}"


def _remove_abandoned(path: Path) -> None:
    """Remove the temporary folders that `atomic_dir(path)` calls of this machine left when their process was
    killed (SIGKILL, the OOM killer, a lost session: no cleanup ran). An export of the 4B model left 16 GB behind,
    hidden, on every such stop. Only a folder whose process is gone is removed: another process writing `path`
    now (or one on another machine sharing the folder) keeps its own. Each removal is warned about."""
    import glob
    import warnings

    tag = _owner_tag()
    host = tag.rsplit("-", 1)[0]
    for folder in path.parent.glob(f".{glob.escape(path.name)}.{glob.escape(host)}-*.tmp"):
        pid = folder.name[len(f".{path.name}.{host}-") :].split(".", 1)[0]
        if not pid.isdigit() or not folder.is_dir() or folder.is_symlink() or _alive(int(pid)):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            warnings.warn(f"removed {folder}, left by an earlier run writing {path} that was killed", stacklevel=2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: another user's process, alive
        return True
    return True


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A temporary folder next to `path` to fill; on success it replaces `path` (a previous one is removed).

    The folder is named after this process (`.NAME.HOST-PID.XXXX.tmp`), so that one a killed process left is
    recognised and removed by the next call for the same `path` (`_remove_abandoned`)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(path)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.{_owner_tag()}.", suffix=".tmp"))
    except OSError as err:  # named as the caller's folder, not as a hidden temporary one
        raise OSError(err.errno, f"cannot write {path}: {err.strerror} in {path.parent}") from None
    try:
        yield tmp
        usual_modes(tmp)
        if path.exists():
            trash = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(trash)
            tmp.rename(path)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
