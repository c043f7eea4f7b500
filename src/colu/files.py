"""Writing result files: atomic, complete, and readable by whoever the user's umask allows.

Every file the package writes for a user (results, reports, plots,
checkpoints, benchmark JSON) goes through :func:`atomic_write_bytes`: the
bytes go to a hidden temporary file beside the target (``.NAME.XXXX.tmp``),
are flushed to disk, and replace the target in one rename, so a reader sees
the old file or the new one and never half of one. ``tempfile.mkstemp``
creates its file with mode 0600 whatever the umask says; the temporary file
gets the mode an ordinary ``open()`` would have given (0644 under the usual
umask 022) before it is renamed, so that runs written to a shared folder can
be read by the collaborators who share it.

A write that fails (a full disk surfaces in ``write`` or ``fsync`` as ``[Errno
28] No space left on device``, which does not say what was being written)
raises :class:`WriteError`, an ``OSError`` whose message is one line naming
the file; the old file, or none, is left in place.

Only torch-free standard-library code lives here, so any tool can use it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import tempfile

TMP_SUFFIX = ".tmp"
_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class WriteError(OSError):
    """Writing a file failed; ``str()`` is the one-line message naming the file."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def naming(path: str):
    """Re-raise an ``OSError`` of the block as a :class:`WriteError` that names ``path`` (for writers of their own,
    such as an append to a log)."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = " (free some space on that disk, or write elsewhere)" if exc.errno in _FULL else ""
        raise WriteError(exc.errno, f"cannot write {path}: {reason}{hint}") from exc


@functools.lru_cache(maxsize=None)
def _default_mode() -> int:
    # the umask can only be read by setting it; put it straight back (once per process, since another
    # thread creating a file in between would briefly see the placeholder)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a partial one.

    Raises:
        WriteError: the write failed (a full disk, a read-only folder, ...); the message names ``path``.
    """
    with naming(path):
        directory = os.path.dirname(os.path.abspath(path))
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=TMP_SUFFIX)
        try:
            with os.fdopen(fd, "wb") as f:
                os.fchmod(f.fileno(), _default_mode())
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise


def atomic_write_text(path: str, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str, obj, indent: int = 1) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, allow_nan=False) + "\n")


def is_leftover_tmp(name: str) -> bool:
    """A temporary file that :func:`atomic_write_bytes` left behind when its process was killed."""
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def read_json_object(path: str) -> dict:
    """The JSON object in ``path``; ``ValueError`` (with the reason) when it is not valid UTF-8 JSON or not an
    object, ``OSError`` when it cannot be read. Callers add what the file is and what to do."""
    with open(path, encoding="utf-8") as f:
        try:
            value = json.load(f)
        except UnicodeDecodeError as exc:
            raise ValueError(str(exc)) from None
    if not isinstance(value, dict):
        raise ValueError(f"expected a JSON object, got {type(value).__name__}")
    return value
