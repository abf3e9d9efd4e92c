"""Writing a folder all at once: fill a temporary sibling, then rename it into place.

Used for the backbone caches (:mod:`.backbone`) and the saved adapters (:mod:`.lora`), so an
interrupted write never leaves a half-written folder where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def replacing_folder(dest: Path, *, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A temporary sibling folder of ``dest`` to fill; it replaces ``dest`` only if the block finishes.

    The finished folder gets the permissions of any other folder (``mkdtemp`` makes it private):
    0755, its files 0644. ``keep``: a ``dest`` that already exists and passes ``keep(dest)`` (a
    complete cache that a concurrent build finished first) stays, and the new folder is dropped;
    one that does not is replaced. If the block raises, ``dest`` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        for item in tmp.iterdir():
            if item.is_file():
                os.chmod(item, 0o644)
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
