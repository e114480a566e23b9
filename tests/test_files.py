"""Atomic outputs: OutputSet renames a stage's files together, atomic_dir swaps a directory, check_writable
finds a bad folder early, remove_stale_temporaries cleans up after a killed run."""
from __future__ import annotations

import errno
import os
import signal

import pytest

from nnlib import files
from nnlib.errors import OutputError


def test_output_set_renames_every_file_only_at_the_end(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with files.OutputSet() as out:
        files.write_text(out.path(tmp_path / "a.txt"), "new a")
        files.write_json(out.path(tmp_path / "sub" / "b.json"), {"b": 1})
        assert (tmp_path / "a.txt").read_text() == "old a"  # nothing moves before the set commits
        assert not (tmp_path / "sub" / "b.json").exists()
    assert (tmp_path / "a.txt").read_text() == "new a"
    assert (tmp_path / "sub" / "b.json").read_text() == '{\n  "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.rglob("*.tmp")) == []


def test_output_set_keeps_the_old_files_when_the_block_fails(tmp_path):
    (tmp_path / "a.txt").write_text("old a")
    with pytest.raises(RuntimeError), files.OutputSet() as out:
        files.write_text(out.path(tmp_path / "a.txt"), "new a")
        raise RuntimeError("training failed half-way")
    assert (tmp_path / "a.txt").read_text() == "old a"
    assert list(tmp_path.glob(".*.tmp")) == []


def test_a_full_disk_becomes_one_output_error_naming_the_path(tmp_path, monkeypatch):
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith("b.txt"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OutputError, match=r"cannot write .*b.txt: disk full"):
        with files.OutputSet() as out:
            files.write_text(out.path(tmp_path / "a.txt"), "a")
            files.write_text(out.path(tmp_path / "b.txt"), "b")
    assert list(tmp_path.glob(".*.tmp")) == []


def test_check_writable_names_the_folder(tmp_path):
    files.check_writable([tmp_path / "new" / "folder"])  # created when missing
    assert (tmp_path / "new" / "folder").is_dir()
    (tmp_path / "metrics").write_text("a file where a folder should be")
    with pytest.raises(OutputError, match="cannot write to .*metrics/"):
        files.check_writable([tmp_path / "metrics"])


def test_stale_temporaries_of_a_killed_run_are_removed(tmp_path):
    (tmp_path / ".model.npz.abc123.tmp").write_bytes(b"half")
    (tmp_path / "model.npz").write_bytes(b"whole")
    assert files.remove_stale_temporaries([tmp_path, tmp_path / "absent"]) == [tmp_path / ".model.npz.abc123.tmp"]
    assert [p.name for p in tmp_path.iterdir()] == ["model.npz"]


def test_stale_temporaries_are_found_by_name_files_and_directories_alike(tmp_path):
    (tmp_path / ".shards.1a2b.tmp").mkdir()
    (tmp_path / ".shards.1a2b.tmp" / "train-00000.npz").write_bytes(b"half")
    (tmp_path / ".shards.3c4d.old.tmp").mkdir()
    (tmp_path / ".raw.5e6f.tmp").write_bytes(b"another output's")
    (tmp_path / ".hidden.tmp").write_bytes(b"not ours: no random part")
    removed = files.remove_stale_temporaries([tmp_path], ["shards"])
    assert [p.name for p in removed] == [".shards.1a2b.tmp", ".shards.3c4d.old.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", ".raw.5e6f.tmp"]


def test_atomic_dir_swaps_the_new_directory_in_only_when_the_block_succeeds(tmp_path):
    target = tmp_path / "shards"
    target.mkdir()
    (target / "old.npz").write_bytes(b"old")
    with pytest.raises(RuntimeError), files.atomic_dir(target) as new:
        (new / "new.npz").write_bytes(b"new")
        raise RuntimeError("interrupted half-way")
    assert [p.name for p in target.iterdir()] == ["old.npz"] and files.temporaries([tmp_path]) == []
    with files.atomic_dir(target) as new:
        (new / "new.npz").write_bytes(b"new")
        assert [p.name for p in target.iterdir()] == ["old.npz"]  # nothing moves before the block ends
    assert [p.name for p in target.iterdir()] == ["new.npz"] and files.temporaries([tmp_path]) == []


def test_signals_arriving_during_a_swap_are_delivered_after_it(tmp_path):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append("handled"))
    try:
        with files.signals_deferred():
            signal.raise_signal(signal.SIGTERM)
            seen.append("block done")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == ["block done", "handled"]


def test_a_failed_rename_puts_every_previous_file_back(tmp_path, monkeypatch):
    for name in "abc":
        (tmp_path / f"{name}.txt").write_text(f"old {name}")
    real_replace = os.replace

    def fail_on_c(src, dst):
        if str(dst).endswith("c.txt") and str(src).endswith(".tmp") and ".old." not in str(src):
            raise OSError(errno.EIO, "Input/output error", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", fail_on_c)
    with pytest.raises(OutputError, match=r"cannot write .*c.txt: input/output error"):
        with files.OutputSet() as out:
            for name in "abc":
                files.write_text(out.path(tmp_path / f"{name}.txt"), f"new {name}")
            files.write_text(out.path(tmp_path / "d.txt"), "new d")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {f"{n}.txt": f"old {n}" for n in "abc"}


@pytest.mark.parametrize("make", ["directory", "read_only", "fifo", "parent_is_a_file"])
def test_a_bad_destination_is_refused_before_anything_moves(tmp_path, make):
    (tmp_path / "a.txt").write_text("old a")
    bad = tmp_path / "b.txt"
    if make == "directory":
        bad.mkdir()
        (bad / "keep").write_text("x")
    elif make == "read_only":
        bad.write_text("old b")
        bad.chmod(0o444)
    elif make == "fifo":
        os.mkfifo(bad)
    else:
        (tmp_path / "sub").write_text("a file")
        bad = tmp_path / "sub" / "b.txt"
    with pytest.raises(OutputError, match="cannot write .*b.txt"):
        with files.OutputSet() as out:
            files.write_text(out.path(tmp_path / "a.txt"), "new a")
            files.write_text(out.path(bad), "new b")
    assert (tmp_path / "a.txt").read_text() == "old a"
    assert list(tmp_path.glob(".*.tmp")) == []


def test_atomic_path_never_creates_a_missing_folder_when_told_not_to(tmp_path):
    with pytest.raises(OutputError, match="no such folder"):
        with files.atomic_path(tmp_path / "absent" / "x.png", make_parents=False) as tmp:
            tmp.write_text("x")
    assert not (tmp_path / "absent").exists()


@pytest.mark.parametrize("code, words", [(errno.EROFS, "read-only file system"), (errno.ENOSPC, "disk full"),
                                         (errno.EACCES, "permission denied")])
def test_atomic_path_names_the_errno_meaning(tmp_path, monkeypatch, code, words):
    def fail(src, dst):
        raise OSError(code, os.strerror(code), str(dst))

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OutputError, match=f"cannot write .*x.png: {words}"):
        with files.atomic_path(tmp_path / "x.png") as tmp:
            tmp.write_text("x")
    assert list(tmp_path.iterdir()) == []
