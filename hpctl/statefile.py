"""Checkpoint state in a file that cannot run code when it is read.

A checkpoint is a tree of dicts, lists, tuples, scalars, numpy arrays and torch tensors
(env, task snapshot, controller, RNG states). Pickle would store it in one line, and
would also run whatever a crafted file asks for on ``--resume``. Here the tree becomes
JSON (tuples, non-string dict keys and numpy scalars tagged so they come back as they
were) and the arrays and tensors become safetensors entries; the JSON travels in the
safetensors header. Reading parses JSON and raw buffers, nothing else. A SHA-256 over
the JSON and every buffer is checked before anything is used, so a truncated or edited
file is refused instead of half-restored.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

FORMAT = "hpctl-state-1"
#: numpy arrays up to this many entries go into the JSON (a safetensors entry each would
#: make the header, not the data, the size of a checkpoint of many small arrays)
INLINE_MAX = 64


class StateFileError(ValueError):
    """The file is not a readable, intact hpctl state file."""


def _encode(obj: Any, tensors: dict[str, Any]) -> Any:
    import torch

    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, float)) and not isinstance(obj, np.generic):
        return obj
    if isinstance(obj, np.generic):
        return {"__np__": obj.dtype.str, "v": obj.item()}
    if isinstance(obj, torch.Tensor):
        name = str(len(tensors))
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__torch__": name}
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError("a checkpoint cannot hold an object array")
        if obj.size <= INLINE_MAX and obj.dtype.kind in "biuf":  # small: inline, exact (repr round-trips)
            return {"__nd__": obj.dtype.str, "shape": list(obj.shape), "data": obj.reshape(-1).tolist()}
        name = str(len(tensors))
        tensors[name] = torch.from_numpy(np.ascontiguousarray(obj).copy())
        return {"__numpy__": name, "shape": list(obj.shape)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_encode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in obj.items()]}
    raise TypeError(f"a checkpoint cannot hold a {type(obj).__name__}")


def _decode(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__torch__" in obj:
        return tensors[obj["__torch__"]]
    if "__numpy__" in obj:
        return tensors[obj["__numpy__"]].numpy().reshape(obj["shape"])
    if "__nd__" in obj:
        return np.array(obj["data"], dtype=np.dtype(obj["__nd__"])).reshape(obj["shape"])
    if "__np__" in obj:
        return np.dtype(obj["__np__"]).type(obj["v"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _digest(text: str, tensors: dict[str, Any]) -> str:
    import torch

    h = hashlib.sha256(text.encode())
    for name in sorted(tensors, key=int):
        t = tensors[name]
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def dumps(state: Any) -> bytes:
    """The bytes of a state file holding ``state``."""
    from safetensors.torch import save

    tensors: dict[str, Any] = {}
    text = json.dumps(_encode(state, tensors))
    return save(tensors, metadata={"format": FORMAT, "state": text, "sha256": _digest(text, tensors)})


def loads(data: bytes) -> Any:
    """Parse and verify a state file; raise :class:`StateFileError` if it is not intact."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    try:
        tensors = load(data)
        meta = _metadata(data)
    except (SafetensorError, ValueError, OSError) as exc:
        raise StateFileError(f"not a state file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise StateFileError(f"unknown state format {meta.get('format')!r}")
    text = meta.get("state", "")
    if _digest(text, tensors) != meta.get("sha256"):
        raise StateFileError("checksum mismatch (the file was changed or truncated)")
    try:
        return _decode(json.loads(text), tensors)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"malformed state ({exc})") from None


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's ``__metadata__`` (the format: 8-byte length, then JSON)."""
    if len(data) < 8:
        raise ValueError("file too short")
    n = int.from_bytes(data[:8], "little")
    if n > len(data) - 8:
        raise ValueError("header length beyond the end of the file")
    header = json.loads(data[8:8 + n])
    meta = header.get("__metadata__") or {}
    if not isinstance(meta, dict):
        raise ValueError("bad metadata")
    return meta
