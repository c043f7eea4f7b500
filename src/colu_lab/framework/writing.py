"""The result writers of :mod:`colu.files`, with errors that name the file being written.

A full disk surfaces in ``write`` or ``fsync`` as ``[Errno 28] No space left on device``, which does not say
what was being written; the same goes for a folder that became read-only. These wrappers turn any
``OSError`` of a write into a :class:`WriteError` (still an ``OSError``) whose message is one line naming the
file, so a command's error says what could not be written. The writes stay atomic: :mod:`colu.files` removes
its temporary file when a write fails, so the old file (or none) is left, never half of a new one.
"""

from __future__ import annotations

import contextlib
import errno

from colu import files

_FULL = (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


class WriteError(OSError):
    """Writing a result file failed; ``str()`` is the one-line message naming the file."""

    def __str__(self) -> str:
        return str(self.strerror)


@contextlib.contextmanager
def naming(path: str):
    """Re-raise an ``OSError`` of the block as a :class:`WriteError` that names ``path``."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        reason = exc.strerror or str(exc)
        hint = " (free some space on that disk, or write elsewhere)" if exc.errno in _FULL else ""
        raise WriteError(exc.errno, f"cannot write {path}: {reason}{hint}") from exc


def atomic_write_bytes(path: str, data: bytes) -> None:
    with naming(path):
        files.atomic_write_bytes(path, data)


def atomic_write_text(path: str, text: str) -> None:
    with naming(path):
        files.atomic_write_text(path, text)


def atomic_write_json(path: str, obj, indent: int = 1) -> None:
    with naming(path):
        files.atomic_write_json(path, obj, indent=indent)
