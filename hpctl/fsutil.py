"""Writing a folder all at once: fill a temporary sibling, then rename it into place.

Used for saved adapters (:mod:`hpctl.integrations.peft_export`, grasp_lora's
:mod:`~hpctl.plugins.grasp_lora.lora`) and grasp_lora's backbone caches, so an interrupted
write never leaves a half-written folder where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import uuid
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def replacing_folder(dest: Path, *, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A temporary sibling folder of ``dest`` to fill; it replaces ``dest`` only if the block finishes.

    The finished folder and its files get the usual modes under the umask (0755 and 0644
    under umask 022), like any other output: the folder is made with ``mkdir`` (``mkdtemp``'s
    are private, 0700), and every file gets the mode ``open`` gives a new file (safetensors
    writes its files 0600). ``keep``: a ``dest`` that already exists and passes ``keep(dest)`` (a
    complete cache that a concurrent build finished first) stays, and the new folder is dropped;
    one that does not is replaced. If the block raises, ``dest`` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # mode 0777 less the umask; a unique name, so no race with another writer
    try:
        yield tmp
        _usual_file_modes(tmp)
        if dest.exists():
            if keep is not None and keep(dest):
                return
            shutil.rmtree(dest, ignore_errors=keep is not None)
        try:
            os.replace(tmp, dest)
        except OSError:  # lost a race to a concurrent writer: fine if what it left is to be kept
            if keep is None or not keep(dest):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _usual_file_modes(folder: Path) -> None:
    """Give every file under ``folder`` the mode a file made by ``open`` gets (0666 less the umask)."""
    probe = folder / f".mode-probe-{uuid.uuid4().hex[:12]}"
    probe.touch()
    mode = stat.S_IMODE(probe.stat().st_mode)  # the umask, read without changing it
    probe.unlink()
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink() and stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
