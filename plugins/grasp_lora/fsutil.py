"""Writing a folder all at once: fill a temporary sibling, then rename it into place.

Used for the backbone caches (:mod:`.backbone`) and the saved adapters (:mod:`.lora`), so an
interrupted write never leaves a half-written folder where a complete one is expected.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import Callable, Iterator


@contextlib.contextmanager
def replacing_folder(dest: Path, *, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """A temporary sibling folder of ``dest`` to fill; it replaces ``dest`` only if the block finishes.

    The temporary folder is made with ``mkdir`` (not ``mkdtemp``, whose folders are private,
    0700), so the finished folder and its files get the usual modes under the umask (0755 and
    0644 under umask 022), like any other output. ``keep``: a ``dest`` that already exists and passes ``keep(dest)`` (a
    complete cache that a concurrent build finished first) stays, and the new folder is dropped;
    one that does not is replaced. If the block raises, ``dest`` is left as it was.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    tmp.mkdir()  # mode 0777 less the umask; a unique name, so no race with another writer
    try:
        yield tmp
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
