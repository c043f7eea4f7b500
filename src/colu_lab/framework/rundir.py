"""A run folder (``--out``): who may write it, what it holds, and how earlier results are kept apart.

* **One writer.** :class:`RunFolder.lock` creates ``.colu.lock`` (holding the
  owner's pid, host and command) with ``O_CREAT | O_EXCL``; a second run into
  the same folder stops at once with a message naming the owner. A lock left
  by a process that no longer exists on this host is taken over with a
  notice, under an exclusive ``flock`` on the folder so that two processes
  never both take over the same stale lock; a lock from another host cannot
  be checked, and the message says how to remove it by hand.
* **No mixing.** A fresh run refuses a folder that holds earlier results
  unless asked to ``--overwrite`` them (only the files a run writes are
  deleted: :data:`RESULT_NAMES`); ``--resume`` reuses a finished run's record
  or a checkpoint only when its settings fingerprint matches (the runner
  checks that).
* **No debris.** Temporary files of writes that were killed half-way
  (``.NAME.XXXX.tmp``) are removed when the folder is next locked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time

from colu.files import is_leftover_tmp, naming

try:
    import fcntl
except ImportError:  # not on POSIX: takeovers are not serialised
    fcntl = None

LOCK_NAME = ".colu.lock"
# What a run writes into its folder; --overwrite deletes these and nothing else.
RESULT_NAMES = ("config.json", "results.json", "report.md", "metrics.jsonl", "runs", "checkpoints")
RESULT_SUFFIXES = (".png",)


class FolderBusy(ValueError):
    """Another live process holds the folder's lock."""


@contextlib.contextmanager
def _folder_guard(path: str):
    """An exclusive ``flock`` on the folder ``path`` for the duration of the block (none where fcntl is missing)."""
    if fcntl is None:
        yield
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class RunFolder:
    def __init__(self, path: str):
        self.path = path
        self.lock_path = os.path.join(path, LOCK_NAME)
        self._locked = False

    # ------------------------------------------------------------ lock
    def lock(self, command: str = "") -> None:
        """Take the folder's advisory lock, or raise :class:`FolderBusy` naming the live owner."""
        os.makedirs(self.path, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": command,
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        if self._create_lock(me):
            return
        # the lock exists: take it over only if its owner is gone. Two processes that both read the same stale
        # owner would both unlink and create, so the check, the unlink and the create run under an exclusive
        # flock on the folder itself, one process at a time (a plain create needs no guard: O_EXCL is atomic)
        with _folder_guard(self.path):
            if self._take_over_stale() and self._create_lock(me):
                return
        raise FolderBusy(self._busy_message())

    def _create_lock(self, me: dict) -> bool:
        """Create the lock file holding ``me``; False if it exists already."""
        try:
            fd = os.open(self.lock_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        try:
            with naming(self.lock_path), os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
        except OSError:
            os.unlink(self.lock_path)  # an empty lock would stop the next run for nothing
            raise
        self._locked = True
        return True

    def _owner(self) -> dict | None:
        try:
            with open(self.lock_path, encoding="utf-8") as f:
                owner = json.load(f)
            return owner if isinstance(owner, dict) else None
        except (OSError, ValueError):
            return None

    def _take_over_stale(self) -> bool:
        owner = self._owner()
        if owner is None:
            # unreadable: a lock being written right now, or damaged; give a writer a moment
            time.sleep(0.2)
            owner = self._owner()
        if owner is None:
            stale = "unreadable"
        elif owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
                and not _alive(owner["pid"]):
            stale = f"left by process {owner['pid']}, which is no longer running"
        else:
            return False
        print(f"colu: taking over the lock of {self.path} ({stale})", file=sys.stderr, flush=True)
        try:
            os.unlink(self.lock_path)
        except FileNotFoundError:
            pass
        return True

    def _busy_message(self) -> str:
        owner = self._owner() or {}
        who = f"process {owner.get('pid', '?')} on {owner.get('host', '?')}"
        if owner.get("command"):
            who += f" ({owner['command']})"
        return (f"{self.path} is in use by {who} since {owner.get('since', '?')}: wait for it to finish or choose "
                f"another --out. If that process is gone (another host cannot be checked from here), delete "
                f"{self.lock_path}")

    def unlock(self) -> None:
        if self._locked:
            self._locked = False
            try:
                os.unlink(self.lock_path)
            except FileNotFoundError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unlock()

    # ------------------------------------------------------------ contents
    def result_entries(self) -> list[str]:
        """Names in the folder that an earlier run wrote (sorted)."""
        if not os.path.isdir(self.path):
            return []
        return sorted(n for n in os.listdir(self.path)
                      if n in RESULT_NAMES or n.endswith(RESULT_SUFFIXES))

    def clear(self) -> list[str]:
        """Delete an earlier run's results (and nothing else); returns what was deleted."""
        removed = self.result_entries()
        for name in removed:
            path = os.path.join(self.path, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        return removed

    def remove_leftover_tmp(self) -> list[str]:
        """Delete temporary files of killed writes in the folder, runs/ and checkpoints/."""
        removed = []
        for sub in ("", "runs", "checkpoints"):
            directory = os.path.join(self.path, sub)
            if not os.path.isdir(directory):
                continue
            for name in os.listdir(directory):
                if is_leftover_tmp(name):
                    os.unlink(os.path.join(directory, name))
                    removed.append(os.path.join(sub, name))
        return removed
