"""Which files client.py sends, and in which requests: folders walked, files checked, batches that fit."""

from __future__ import annotations

import os
import stat
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from PIL import Image

from imgserve import config

# Folder walks pick files by extension: those Pillow registers for the formats the server accepts.
Image.init()
IMAGE_EXTENSIONS = frozenset(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in config.ACCEPTED_FORMATS
)


class NoSuchPath(Exception):
    """A path on the command line that is neither a file nor a folder: the run does not start."""


def find_images(paths: list[Path]) -> tuple[list[Path], Counter[str]]:
    """Image files under `paths`, in walk order, each once; and what was skipped, by reason."""
    images: list[Path] = []
    skipped: Counter[str] = Counter()
    seen: set[str] = set()

    def add(path: Path) -> None:
        if (key := file_key(path)) not in seen:
            seen.add(key)
            images.append(path)

    for arg in paths:
        if arg.is_file():
            add(arg)  # named on purpose: the server judges it by its bytes
        elif arg.is_dir():
            for folder, files in walk(arg, skipped):
                for name in files:
                    suffix = Path(name).suffix.lower()
                    if name.startswith("."):  # .DS_Store, macOS "._photo.jpg" resource forks
                        skipped["hidden"] += 1
                    elif suffix not in IMAGE_EXTENSIONS:
                        skipped[suffix or "no extension"] += 1
                    elif not readable_kind(Path(folder, name)):
                        skipped["not a regular file"] += 1
                    else:
                        add(Path(folder, name))
        else:
            raise NoSuchPath(f"no such file or folder: {arg}")
    return images, skipped


def walk(top: Path, skipped: Counter[str]) -> Iterator[tuple[str, list[str]]]:
    """Each folder under `top` (top first, then each subfolder's tree, by name) with its files' names, sorted.
    Hidden folders and folders that cannot be listed are counted in `skipped`; neither they nor links to
    folders are entered.
    A stack, not recursion: Python 3.11's os.walk recurses once per level, and a tree 1,000 folders deep
    (a program's output nested by accident) was a RecursionError before anything was sent."""
    stack = [str(top)]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as listing:
                entries = sorted(listing, key=lambda entry: entry.name)
        except OSError:  # counted, so the note names it
            skipped["unreadable folder"] += 1
            continue
        subfolders: list[str] = []
        files: list[str] = []
        for entry in entries:
            if not is_folder(entry):
                files.append(entry.name)
            elif entry.name.startswith("."):
                skipped["hidden"] += 1
            elif not entry.is_symlink():  # a link to a folder may lead back up: not followed
                subfolders.append(entry.path)
        yield folder, files
        stack.extend(reversed(subfolders))


def is_folder(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def readable_kind(path: Path) -> bool:
    """A regular file, or a link that leads nowhere (sent, it gets its error row); not a named pipe,
    socket or device, whose read would wait forever and hold up the run."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return True


def file_key(path: Path) -> str:
    """The file a path names, for comparing paths: resolved; a symlink loop, which cannot be resolved
    (Python 3.11 raises RuntimeError), by its absolute path: it is sent, and gets its error row."""
    try:
        return str(path.resolve())
    except (OSError, RuntimeError):
        return str(path.absolute())


def batches(paths: list[Path], size: int, max_bytes: int) -> Iterator[list[Path]]:
    """Runs of at most `size` images whose bytes fit one request body of the server."""
    batch: list[Path] = []
    total = 0
    for path in paths:
        n = file_size(path) or 0
        if batch and (len(batch) == size or total + n > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(path)
        total += n
    if batch:
        yield batch


def file_size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def local_problem(path: Path, max_bytes: int) -> str | None:
    """Why `path` cannot be sent at all; such a file gets its error row without a request."""
    size = file_size(path)
    if size is None or not os.access(path, os.R_OK):
        return "cannot read the file"
    if size > max_bytes:
        return f"file too large: {size} bytes, a request holds at most {max_bytes} (${config.ENV_MAX_REQUEST_BYTES})"
    return None
