"""grasp_lora.fsutil: a folder is replaced whole or not at all."""

from __future__ import annotations

import stat

import pytest

from hpctl.plugins.grasp_lora.fsutil import replacing_folder


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_folder_replaced_only_when_the_block_finishes(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with replacing_folder(dest) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("interrupted")
    assert [p.name for p in dest.iterdir()] == ["old.txt"]
    with replacing_folder(dest) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
    assert _mode(dest) == 0o755 and _mode(dest / "new.txt") == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left behind


def test_keep_leaves_a_complete_folder_and_replaces_a_stale_one(tmp_path):
    dest = tmp_path / "cache"
    dest.mkdir()
    (dest / "done").write_text("")
    with replacing_folder(dest, keep=lambda p: (p / "done").exists()) as tmp:
        (tmp / "other").write_text("")
    assert sorted(p.name for p in dest.iterdir()) == ["done"]
    (dest / "done").unlink()
    with replacing_folder(dest, keep=lambda p: (p / "done").exists()) as tmp:
        (tmp / "other").write_text("")
    assert sorted(p.name for p in dest.iterdir()) == ["other"]
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]
