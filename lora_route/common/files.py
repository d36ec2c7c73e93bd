"""Files and folders the package writes and reads: every output file is written beside its target and renamed onto
it only once complete, every output folder (checkpoints, adapters, exports) is built beside its target and swapped
in (:func:`atomic_folder`); JSON objects and JSON-lines records are read with errors that name the file (and line).
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping


@contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary file path next to ``path`` (parent folders created) for the block to write.

    When the block finishes, the file gets the usual permissions (0666 minus the umask; ``mkstemp`` makes 0600)
    and ``os.replace`` moves it onto ``path``; when the block raises, it is removed and ``path`` is untouched.
    ``suffix`` keeps the extension for writers that infer the format from it (e.g. ``.png`` for matplotlib).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        os.replace(temporary, path)
    finally:
        Path(temporary).unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically; returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomic, pretty-printed UTF-8 JSON (NaN and infinities are refused: missing values must be ``null``)."""
    return write_text_atomic(path, json.dumps(obj, ensure_ascii=False, indent=2, allow_nan=False) + "\n")


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> Path:
    """Atomic JSON-lines file, one record per line."""
    return write_text_atomic(path, "".join(json.dumps(dict(r), ensure_ascii=False) + "\n" for r in records))


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON object in ``path``; a missing file raises FileNotFoundError, anything but a JSON object ValueError,
    each naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return data


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines file; a bad line raises ValueError naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such JSONL file: {path}")
    records = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from err
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{number}: expected a JSON object, got {type(record).__name__}")
            records.append(record)
    return records


# ------------------------------------------------------------------------------------------------------- folders
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_NEW_MARK, _OLD_MARK = ".new-", ".old-"


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the system or the
    file system cannot, so that the caller falls back to two renames."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _leftovers(path: Path, mark: str) -> list[Path]:
    return sorted(path.parent.glob(f".{path.name}{mark}*")) if path.parent.is_dir() else []


def recover_folder(path: str | os.PathLike) -> Path:
    """Finish or undo a folder replacement that a crash interrupted: when ``path`` is missing but its previous version
    was set aside, put that back; remove half-built new versions and set-aside old ones. Returns ``path``."""
    path = Path(path)
    kept = _leftovers(path, _OLD_MARK)
    if not path.exists() and kept:
        os.rename(kept[-1], path)
        kept = kept[:-1]
    for leftover in kept + _leftovers(path, _NEW_MARK):
        shutil.rmtree(leftover, ignore_errors=True)
    return path


def recover_folders(parent: str | os.PathLike) -> None:
    """:func:`recover_folder` for every folder of ``parent`` that an interrupted replacement left traces of."""
    parent = Path(parent)
    if not parent.is_dir():
        return
    names = set()
    for entry in parent.iterdir():
        for mark in (_NEW_MARK, _OLD_MARK):
            if entry.name.startswith(".") and mark in entry.name:
                names.add(entry.name[1:entry.name.rindex(mark)])
    for name in sorted(names):
        recover_folder(parent / name)


def building_folder(path: str | os.PathLike, tag: str) -> Path:
    """The name under which the next version of folder ``path`` is built (``tag`` tells builds apart); a leftover of
    a crashed build under this name is removed by :func:`recover_folder`."""
    path = Path(path)
    return path.parent / f".{path.name}{_NEW_MARK}{tag}"


def publish_folder(built: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Move the complete folder ``built`` (beside ``path``) to ``path``, replacing what is there so that at every
    instant ``path`` is either the old complete folder or the new one — or, after a crash between the two renames of
    the fallback (file systems without atomic exchange), missing with the old one set aside beside it, which
    :func:`recover_folder` puts back. Returns ``path``."""
    built, path = Path(built), Path(path)
    if not path.exists():
        os.rename(built, path)
    elif _exchange(built, path):
        shutil.rmtree(built)  # now the old folder
    else:
        aside = Path(tempfile.mkdtemp(prefix=f".{path.name}{_OLD_MARK}", dir=path.parent))
        os.rmdir(aside)
        os.rename(path, aside)
        os.rename(built, path)
        shutil.rmtree(aside)
    return path


@contextmanager
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` for the block to fill; when the block finishes, the folder replaces
    ``path`` (:func:`publish_folder`); when it raises, the folder is removed and ``path`` is untouched."""
    path = recover_folder(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    built = Path(tempfile.mkdtemp(prefix=f".{path.name}{_NEW_MARK}", dir=path.parent))
    try:
        yield built
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(built, 0o777 & ~umask)  # mkdtemp makes 0700
        publish_folder(built, path)
    finally:
        shutil.rmtree(built, ignore_errors=True)
