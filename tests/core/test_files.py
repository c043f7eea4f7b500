"""colu.files: atomic writes that name the file when they fail and leave the old one in place."""

import errno
import os

import pytest

from colu import files


def test_a_failed_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    target = tmp_path / "out" / "results.json"
    files.atomic_write_json(str(target), {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(files.WriteError) as caught:
        files.atomic_write_json(str(target), {"new": 2})
    assert str(caught.value) == (f"cannot write {target}: No space left on device (free some space on that disk, "
                                 "or write elsewhere)")
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert files.read_json_object(str(target)) == {"old": 1}
    assert [p.name for p in target.parent.iterdir()] == ["results.json"]  # no temporary file left


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only folder")
def test_a_read_only_folder_is_named_without_the_disk_hint(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(files.WriteError, match=r"cannot write .*ro/x\.txt: Permission denied$"):
            files.atomic_write_text(str(folder / "x.txt"), "x")
    finally:
        folder.chmod(0o700)
