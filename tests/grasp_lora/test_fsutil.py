"""grasp_lora.fsutil: a folder is replaced whole or not at all."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest

from hpctl.plugins.grasp_lora.fsutil import replacing_folder


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_finished_folder_has_the_usual_modes_under_the_umask(tmp_path, umask):
    """Not mkdtemp's private 0700: what mkdir and open give any other output (0755/0644 under 022)."""
    from safetensors.numpy import save_file

    before = os.umask(umask)
    try:
        with replacing_folder(tmp_path / "adapter") as tmp:
            (tmp / "config.json").write_text("{}")
            save_file({"w": np.zeros(2)}, str(tmp / "adapter_model.safetensors"))  # safetensors writes 0600
            (tmp / "sub").mkdir()
            (tmp / "sub" / "private.bin").write_bytes(b"x")
            os.chmod(tmp / "sub" / "private.bin", 0o600)
    finally:
        os.umask(before)
    out = tmp_path / "adapter"
    assert _mode(out) == _mode(out / "sub") == 0o777 & ~umask
    for name in ("config.json", "adapter_model.safetensors", "sub/private.bin"):
        assert _mode(out / name) == 0o666 & ~umask, name
    assert sorted(p.name for p in out.iterdir()) == ["adapter_model.safetensors", "config.json", "sub"]


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
    assert _mode(dest) == 0o777 & ~_umask() and _mode(dest / "new.txt") == 0o666 & ~_umask()
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
