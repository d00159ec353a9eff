"""Where a dataset lives, as the user wrote it, and how a (validated) file name inside it is opened.

The dataset path in a config or on the command line is trusted (the user chose it); file names read from
inside the dataset (the manifest's shard names) are not. The two only meet here:

* a local directory ``data/sim``: file ``traj-0.tar`` is ``data/sim/traj-0.tar``, opened with ``open()``
  (never through a URL opener) and refused if it resolves outside the directory (a symlink out);
* a template with ``{name}``: ``pipe:aws s3 cp s3://bucket/ds/{name} -`` or ``https://host/ds/{name}``;
  the name is substituted and the result opened with WebDataset's ``gopen`` (pipes, http(s), ...);
* a URL base ``https://host/ds`` (any ``scheme://``): the same as ``https://host/ds/{name}``.

Names are checked by :func:`check_file_name` before they are combined (one plain
component: letters, digits, ``_.-``; no ``/``, ``..``, ``:``, spaces or shell metacharacters), so a
manifest can neither run a command, reach another host nor leave the dataset folder.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import Any, BinaryIO

from actionprior.data.errors import DataError, show

_URL_BASE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
# A file name inside a dataset folder as the manifest may spell it: one plain path component, no scheme,
# no shell metacharacters (it may be substituted into a user's `pipe:` template), not '.' or '..'.
SAFE_FILE_NAME = re.compile(
    r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}\Z"
)  # \Z: "$" also matches before a final newline


def check_file_name(value: Any, what: str) -> str:
    """A shard or file name from the manifest: one plain relative name inside the dataset folder."""
    if not isinstance(value, str) or not SAFE_FILE_NAME.match(value) or ".." in value:
        raise DataError(
            f"{what} {show(value)} is not a plain file name inside the dataset folder "
            "(letters, digits, '_', '.', '-'; no '/', '..', ':' or spaces)"
        )
    return value


def is_remote(location: str | Path) -> bool:
    """A user-written stream source (template or URL base) rather than a local directory."""
    text = str(location)
    return "{name}" in text or text.startswith("pipe:") or bool(_URL_BASE.match(text))


def file_url(location: str | Path, name: str) -> str:
    """The path or URL of file ``name`` (validated) of the dataset at ``location``."""
    check_file_name(name, f"{location}: file name")
    text = str(location)
    if "{name}" in text:
        return text.replace("{name}", name)
    if text.startswith("pipe:"):
        raise DataError(
            f"dataset path {text!r}: a pipe: source must say where the file name goes with {{name}}, "
            "e.g. 'pipe:aws s3 cp s3://bucket/dataset/{name} -'"
        )
    if _URL_BASE.match(text):
        return text.rstrip("/") + "/" + name
    return str(Path(text) / name)


def shown_path(location: str | Path, name: str) -> str:
    """File ``name`` of a dataset as messages name it: its URL, or its path (``./name`` in the current folder:
    a dataset path ``''`` is the current folder, not ``/``)."""
    text = str(location)
    if is_remote(text):
        try:
            return file_url(text, name)
        except DataError:
            return f"{text} ({name})"
    return os.path.join(text or ".", name)


def contained(location: str | Path, name: str) -> bool:
    """Whether local file ``name`` resolves inside the directory (False for a symlink that leaves it)."""
    directory = Path(location).resolve()
    target = (directory / name).resolve()
    return target.parent == directory or directory in target.parents


def open_file(location: str | Path, name: str) -> BinaryIO:
    """Open file ``name`` of a dataset for reading, local or remote (see module doc)."""
    url = file_url(location, name)
    if is_remote(location):
        import webdataset as wds

        return wds.gopen(url, "rb")
    if not contained(location, name):
        raise DataError(
            f"{url}: resolves outside the dataset folder {location} (a symlink); refusing to read it"
        )
    return open_local(url)


def open_local(path: str | Path) -> BinaryIO:
    """Open a local file for reading; refuses anything but a regular file (a FIFO would block forever, a
    device would never end)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: opening a FIFO must not wait for a writer
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path}: not a regular file; refusing to read it")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
