"""What a run writes (its folder, files, MLflow artifacts) gets the usual modes under the
umask, as ``mkdir`` and ``open`` give them: not the private 0700/0600 of ``mkdtemp``,
``mkstemp`` or safetensors (grasp_lora's adapter folders: tests/grasp_lora/test_fsutil.py).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def _wrong(root: Path, umask: int) -> dict[str, str]:
    want = {True: 0o777 & ~umask, False: 0o666 & ~umask}
    return {name: oct(mode) for name, mode in _modes(root).items()
            if mode != want[(root / name).is_dir()]}


@pytest.mark.parametrize("plugin,flags", [
    ("synthetic", ["--budget", "16"]),
    ("magnitude_prune", ["--budget", "9", "--total-steps", "60"]),
])
@pytest.mark.parametrize("umask", [0o022, 0o027], ids=["umask022", "umask027"])
def test_run_outputs_have_the_usual_modes(hpctl_main, tmp_path, plugin, flags, umask):
    before = os.umask(umask)
    try:
        code, out, err = hpctl_main("run", plugin, *flags, "--out", str(tmp_path / "run"), "--json")
    finally:
        os.umask(before)
    assert code == 0, err
    assert _wrong(tmp_path / "run", umask) == {}
    import mlflow

    run_id = json.loads(out.strip().splitlines()[-1])["mlflow_run_id"]
    uri = mlflow.MlflowClient().get_run(run_id).info.artifact_uri
    assert urlparse(uri).scheme in ("", "file"), uri  # the test store keeps artifacts on disk
    artifacts = Path(unquote(urlparse(uri).path))
    assert any(artifacts.rglob("result.json"))
    assert _wrong(artifacts, umask) == {}, uri
