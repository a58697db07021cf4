"""What keeps ``render`` from destroying what it did not make: ownership of files, one run per folder, no symlinks.

Render owns a file in its output folder when it can tell that an earlier render wrote it: a clip's sidecar
carries a ``render_request`` and lists the clip's audio; an index (``index.jsonl``, ``index.rank{N}.jsonl``)
holds only index lines; the index page (``index.html``) carries :data:`GENERATOR_META`. Anything else at a name
render would write (a user's file, a symlink, a folder) is refused before the model loads, unless the user passes
``--overwrite``; even then a symlink is replaced, never written through.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sada_audio.errors import SADAError

from .manifest import FORMATS, RenderRow
from .plan import read_sidecar

INDEX_NAME = "index.jsonl"
INDEX_PAGE_NAME = "index.html"
#: Marks the HTML pages sada-audio writes, so that render knows its own index page from a user's.
GENERATOR_META = '<meta name="generator" content="sada-audio">'
HOLDER_NOTE = ".sada-audio-render.pid"
_INDEX_KEYS = {"name", "line", "status"}
# the first foreign files a refusal names; the rest are counted
_LISTED = 10
# what write_atomically leaves when a write is interrupted: .NAME.<12 hex digits>.tmp
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")


def part_name(rank: int) -> str:
    """The file in which process ``rank`` appends its results before the main process merges them."""
    return f"index.rank{rank}.jsonl"


def is_index_name(name: str) -> bool:
    """Whether ``name`` is one of the index files render writes (the merged index or a process's part)."""
    if name == INDEX_NAME:
        return True
    rank = name.removeprefix("index.rank").removesuffix(".jsonl")
    return name.startswith("index.rank") and name.endswith(".jsonl") and rank.isdigit()


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return path.lstat()
    except FileNotFoundError:
        return None


def _is_render_index(path: Path) -> bool:
    """Whether ``path`` (a regular file) holds only index lines, as render writes them (a truncated last line
    included: a killed process may leave one)."""
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except (OSError, UnicodeDecodeError):
        return False
    complete, last = lines[:-1], lines[-1]
    for line in complete:
        try:
            entry = json.loads(line)
        except ValueError:
            return False
        if not isinstance(entry, dict) or not entry.keys() >= _INDEX_KEYS:
            return False
    return not last or last.startswith('{"name": ')


def _is_render_page(path: Path) -> bool:
    try:
        with path.open("r", encoding="utf-8", errors="replace") as file:
            return GENERATOR_META in file.read(4096)
    except OSError:
        return False


def is_clip_sidecar(meta: Any) -> bool:
    """Whether a parsed sidecar was written by a sada-audio command (``generate``, ``render``, ``evaluate
    --generate``, ``benchmark``): a JSON object with the clip's prompt and seed that lists its audio files."""
    return (
        isinstance(meta, dict)
        and isinstance(meta.get("prompt"), str)
        and isinstance(meta.get("seed"), int)
        and isinstance(meta.get("files"), list)
        and all(isinstance(name, str) for name in meta["files"])
    )


def is_render_sidecar(meta: Any) -> bool:
    """Whether a parsed sidecar was written by render (it records the request the clip was rendered for)."""
    return is_clip_sidecar(meta) and isinstance(meta.get("render_request"), dict)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def clip_folder_files(directory: Path, *, recursive: bool = False) -> tuple[list[Path], list[Path]]:
    """The entries of ``directory`` (and, if ``recursive``, of its subfolders) split into those a sada-audio
    command made -- clip sidecars (:func:`is_clip_sidecar`), the audio files their sidecars list, hidden temporary
    files of an interrupted write -- and all the others: a user's files, symlinks, and (unless ``recursive``)
    folders. A missing ``directory`` holds neither."""
    owned: list[Path] = []
    foreign: list[Path] = []
    sidecars: dict[Path, Any] = {}

    def sidecar(path: Path) -> Any:
        if path not in sidecars:
            info = _lstat(path)
            sidecars[path] = _read_json(path) if info is not None and stat.S_ISREG(info.st_mode) else None
        return sidecars[path]

    def walk(folder: Path) -> None:
        for path in sorted(folder.iterdir()):
            mode = path.lstat().st_mode
            if recursive and stat.S_ISDIR(mode):
                walk(path)
            elif not stat.S_ISREG(mode):
                foreign.append(path)
            elif _TEMPORARY.fullmatch(path.name) or (path.suffix == ".json" and is_clip_sidecar(sidecar(path))):
                owned.append(path)
            else:
                meta = sidecar(path.with_suffix(".json"))
                (owned if is_clip_sidecar(meta) and path.name in meta["files"] else foreign).append(path)

    if _lstat(directory) is not None:
        walk(directory)
    return owned, foreign


def listed(names: Sequence[str]) -> str:
    """The first names of a refusal, the rest counted: ``a, b and 3 more``."""
    return ", ".join(names[:_LISTED]) + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def check_clip_folder(directory: Path, overwrite: bool, *, recursive: bool = False) -> list[Path]:
    """Check a folder a command fills with clips; return the files of an earlier run that it may replace
    (empty unless ``overwrite``). Nothing is removed here.

    Raises:
        SADAError: the folder holds anything a sada-audio command did not make (with or without ``overwrite``:
            only what the tool made is ever replaced), or clips of an earlier run and ``overwrite`` is false.
    """
    info = _lstat(directory)
    if info is not None and stat.S_ISLNK(info.st_mode):
        raise SADAError(
            f"'{directory}' is a symlink: sada-audio does not write through one (remove it or choose another "
            "output folder)"
        )
    if info is not None and not stat.S_ISDIR(info.st_mode):
        raise SADAError(f"'{directory}' is a file, not a folder")
    owned, foreign = clip_folder_files(directory, recursive=recursive)
    if foreign:
        names = [str(path.relative_to(directory)) for path in foreign]
        raise SADAError(
            f"'{directory}' holds {len(names)} file{'s' * (len(names) != 1)} that sada-audio did not make: "
            f"{listed(names)} (move them away or choose another output folder; --overwrite only replaces clips "
            "that sada-audio made)"
        )
    if owned and not overwrite:
        raise SADAError(f"'{directory}' already holds clips of an earlier run (use --overwrite to replace them)")
    return owned


def _row_problems(out_dir: Path, row: RenderRow) -> list[str]:
    """The files at ``row``'s output names that render did not make."""
    sidecar_path = out_dir / row.sidecar_name
    sidecar_stat = _lstat(sidecar_path)
    problems = []
    meta = None
    if sidecar_stat is not None:
        meta = read_sidecar(out_dir, row) if stat.S_ISREG(sidecar_stat.st_mode) else None
        if not is_render_sidecar(meta):
            problems.append(row.sidecar_name)
            meta = None
    owned = set(meta["files"]) if meta is not None else set()
    for name in (f"{row.name}.{fmt}" for fmt in FORMATS):
        audio_stat = _lstat(out_dir / name)
        if audio_stat is None:
            continue
        if not stat.S_ISREG(audio_stat.st_mode) or name not in owned:
            problems.append(name)
    return problems


def foreign_files(out_dir: Path, rows: Sequence[RenderRow], ranks: int = 1) -> list[str]:
    """Names in ``out_dir`` that rendering ``rows`` would replace although no render made them: clips' audio
    or sidecars, the index, its page and the processes' index parts (symlinks and non-files always count)."""
    problems = []
    for name in (INDEX_NAME, *(part_name(rank) for rank in range(ranks))):
        path = out_dir / name
        info = _lstat(path)
        if info is not None and (not stat.S_ISREG(info.st_mode) or not _is_render_index(path)):
            problems.append(name)
    page = out_dir / INDEX_PAGE_NAME
    info = _lstat(page)
    if info is not None and (not stat.S_ISREG(info.st_mode) or not _is_render_page(page)):
        problems.append(INDEX_PAGE_NAME)
    for row in rows:
        problems.extend(_row_problems(out_dir, row))
    return problems


def check_ownership(out_dir: Path, rows: Sequence[RenderRow], ranks: int, overwrite: bool) -> None:
    """Refuse to replace files render did not make, unless ``overwrite``; a folder at an output name, always.

    Raises:
        SADAError: a folder stands at one of render's output names, or a file there was not made by render and
            ``overwrite`` is false.
    """
    problems = foreign_files(out_dir, rows, ranks)
    folders = [name for name in problems if (info := _lstat(out_dir / name)) is not None and stat.S_ISDIR(info.st_mode)]
    if folders:
        raise SADAError(
            f"'{out_dir}' holds {len(folders)} folder{'s' * (len(folders) != 1)} where render writes files: "
            f"{listed(folders)} (a folder is never replaced, even with --overwrite; move it away or choose another "
            "output folder)"
        )
    if problems and not overwrite:
        raise SADAError(
            f"'{out_dir}' holds {len(problems)} file{'s' * (len(problems) != 1)} that render did not make but would "
            f"replace: {listed(problems)} (move them away, choose another folder, or pass --overwrite to replace them)"
        )


def check_manifest_location(manifest: Path, out_dir: Path, rows: Sequence[RenderRow]) -> None:
    """Refuse a manifest that is one of the files rendering into ``out_dir`` would write or remove.

    Raises:
        SADAError: the manifest is the index, a process's index part, or a clip's audio or sidecar.
    """
    try:
        manifest_real = manifest.resolve(strict=True)
        out_real = out_dir.resolve()
    except OSError:
        return  # a missing manifest is reported when it is read
    if manifest_real.parent != out_real:
        return
    outputs = {row.sidecar_name for row in rows} | {f"{row.name}.{fmt}" for row in rows for fmt in FORMATS}
    name = manifest_real.name
    if is_index_name(name) or name in outputs:
        raise SADAError(
            f"the manifest '{manifest}' is one of the files rendering into '{out_dir}' writes; "
            "copy it elsewhere or choose another output folder"
        )


def create_exclusively(path: Path) -> int:
    """Open a new file for appending; an existing file or symlink at ``path`` is an error, never followed.

    Raises:
        SADAError: something exists at ``path`` (another process made it in the meantime, or a symlink).
    """
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_APPEND, 0o666)
    except FileExistsError:
        raise SADAError(f"'{path}' appeared while rendering; is another render writing to this folder?") from None


def remove_stale_part(path: Path) -> None:
    """Remove an earlier run's index part of this process (a regular file; a symlink is removed, not followed)."""
    if _lstat(path) is not None:
        path.unlink()


class FolderLock:
    """An advisory lock on an output folder: one render run at a time writes there.

    The lock is a ``flock`` on the folder itself, so the kernel drops it when its holder ends, even if killed, and
    no lock file is left behind. While held, a hidden note names the holder, so a refused run can say who it is.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.note = out_dir / HOLDER_NOTE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises:
        SADAError: another run holds the lock."""
        fd = os.open(self.out_dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            try:
                holder = self.note.read_text(encoding="utf-8").strip()
            except OSError:
                holder = ""
            raise SADAError(
                f"another render ({holder or 'process'}) is writing to '{self.out_dir}'; wait for it to finish "
                "or choose another output folder"
            ) from None
        self._fd = fd
        with contextlib.suppress(OSError):  # the note only helps the message; the lock does not depend on it
            if _lstat(self.note) is not None:
                self.note.unlink()
            note = os.open(self.note, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
            with os.fdopen(note, "w", encoding="utf-8") as file:
                file.write(f"pid {os.getpid()} on {socket.gethostname()}\n")

    def release(self) -> None:
        if self._fd is not None:
            self.note.unlink(missing_ok=True)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
