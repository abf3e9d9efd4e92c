"""Checkpoint state in a file that cannot run code when it is read.

A checkpoint is a tree of the values listed in :data:`ACCEPTED` (the env, the task's
snapshot, the controller, RNG states). Pickle would store any tree in one line, and would
also run whatever a crafted file asks for on ``--resume``. Here the tree becomes JSON
(tuples, non-string dict keys and numpy scalars tagged so they come back as they were) and
the arrays and tensors become safetensors entries; the JSON travels in the safetensors
header. Reading parses JSON and raw buffers, nothing else. A SHA-256 over the JSON and
every buffer is checked before anything is used, so a truncated or edited file is refused
instead of half-restored.

What goes in comes back equal, with the type it had; what could not come back so is
refused when the file is written (:class:`StateTypeError`, naming the type and where it
sits in the tree, e.g. ``state['task']['params'][1]``), never silently changed: a
namedtuple would come back as a plain tuple, a dataclass or any other object could only
come back by running its class's code. The two documented conversions: a torch tensor
comes back detached, contiguous and on the CPU (same dtype, shape and bits; a
``nn.Parameter`` as a plain tensor), and an ``OrderedDict`` (e.g. a ``state_dict()``) as a
plain dict in the same order.

torch is imported only when the tree holds torch tensors: a checkpoint of numpy arrays is
written and read through numpy (``safetensors.numpy``), so the core runs without torch.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections import OrderedDict
from typing import Any

import numpy as np

from hpctl.errors import HpctlError

FORMAT = "hpctl-state-1"
#: numpy arrays up to this many entries go into the JSON (a safetensors entry each would
#: make the header, not the data, the size of a checkpoint of many small arrays)
INLINE_MAX = 64

#: what a checkpoint (and so a task's snapshot) may hold, in words (hpctl.task.Task says the same)
ACCEPTED = ("None, bool, int, float, str; numpy scalars and arrays of bool, (u)int8-64, float16-64 "
            "(and complex64 arrays); torch tensors (any safetensors dtype: float, bfloat16, int, bool); "
            "lists, tuples and dicts of these (dict keys: str, int, float, bool, None, tuples of them)")

#: numpy dtypes a checkpoint stores, with the name torch gives each (the checksum's spelling)
_NUMPY = {np.dtype(k): v for k, v in {
    "bool": "torch.bool", "int8": "torch.int8", "int16": "torch.int16", "int32": "torch.int32",
    "int64": "torch.int64", "uint8": "torch.uint8", "uint16": "torch.uint16", "uint32": "torch.uint32",
    "uint64": "torch.uint64", "float16": "torch.float16", "float32": "torch.float32",
    "float64": "torch.float64", "complex64": "torch.complex64"}.items()}
#: safetensors' dtype codes -> (torch's name, the numpy dtype or None where numpy has none)
_CODES = {"BOOL": ("torch.bool", np.bool_), "I8": ("torch.int8", np.int8), "I16": ("torch.int16", np.int16),
          "I32": ("torch.int32", np.int32), "I64": ("torch.int64", np.int64), "U8": ("torch.uint8", np.uint8),
          "U16": ("torch.uint16", np.uint16), "U32": ("torch.uint32", np.uint32),
          "U64": ("torch.uint64", np.uint64), "F16": ("torch.float16", np.float16),
          "BF16": ("torch.bfloat16", None), "F32": ("torch.float32", np.float32),
          "F64": ("torch.float64", np.float64), "C64": ("torch.complex64", np.complex64),
          "F8_E4M3": ("torch.float8_e4m3fn", None), "F8_E5M2": ("torch.float8_e5m2", None),
          "F8_E4M3FNUZ": ("torch.float8_e4m3fnuz", None), "F8_E5M2FNUZ": ("torch.float8_e5m2fnuz", None)}
_TORCH_NAMES = {name for name, _ in _CODES.values()}


class StateFileError(ValueError):
    """The file is not a readable, intact hpctl state file."""


class StateTypeError(HpctlError, TypeError):
    """A value a checkpoint cannot hold faithfully (named with its place in the tree)."""


def _refuse(obj: Any, path: str, why: str = "", *, role: str = "") -> StateTypeError:
    kind = type(obj)
    name = f"{kind.__module__}.{kind.__qualname__}" if kind.__module__ not in ("builtins",) else kind.__qualname__
    if isinstance(obj, tuple) and hasattr(kind, "_fields"):
        what, why = f"namedtuple {name}", why or "it would come back as a plain tuple; use a dict or a tuple"
    else:
        what = name
    return StateTypeError(f"a checkpoint cannot hold a {what}{role} at {path}" + (f" ({why})" if why else "")
                          + "; it holds None, bool, int, float, str, numpy scalars and arrays, torch tensors, "
                          "and lists, tuples and dicts of them")


def _is_tensor(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(obj, torch.Tensor)


def _encode(obj: Any, tensors: dict[str, Any], path: str) -> Any:
    kind = type(obj)
    if obj is None or kind in (bool, str, int, float):
        return obj
    if isinstance(obj, np.generic):
        if obj.dtype not in _NUMPY or obj.dtype.kind == "c":
            raise _refuse(obj, path, f"numpy dtype {obj.dtype}")
        return {"__np__": obj.dtype.str, "v": obj.item()}
    if _is_tensor(obj):
        import torch

        if obj.layout != torch.strided or str(obj.dtype) not in _TORCH_NAMES:
            raise _refuse(obj, path, f"a {obj.layout} {obj.dtype} tensor")
        name = str(len(tensors))
        tensors[name] = obj.detach().to("cpu").contiguous().clone()
        return {"__torch__": name}
    if kind is np.ndarray:
        if obj.dtype not in _NUMPY or not obj.dtype.isnative:
            raise _refuse(obj, path, f"an array of dtype {obj.dtype.str}")
        if obj.size <= INLINE_MAX and obj.dtype.kind in "biuf":  # small: inline, exact (repr round-trips)
            return {"__nd__": obj.dtype.str, "shape": list(obj.shape), "data": obj.reshape(-1).tolist()}
        name = str(len(tensors))
        tensors[name] = np.ascontiguousarray(obj).copy()
        return {"__numpy__": name, "shape": list(obj.shape)}
    if kind is tuple:
        return {"__tuple__": [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]}
    if kind is list:
        return [_encode(v, tensors, f"{path}[{i}]") for i, v in enumerate(obj)]
    if kind is dict or kind is OrderedDict:
        if all(type(k) is str and not k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{path}[{k!r}]") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not _hashable_key(k):
                raise _refuse(k, path, "keys are str, int, float, bool, None or tuples of them", role=" as a dict key")
            items.append([_encode(k, tensors, f"{path}[{k!r}] (key)"), _encode(v, tensors, f"{path}[{k!r}]")])
        return {"__items__": items}
    raise _refuse(obj, path)


def _hashable_key(k: Any) -> bool:
    if k is None or type(k) in (bool, str, int, float):
        return True
    return type(k) is tuple and all(_hashable_key(v) for v in k)


def _decode(obj: Any, tensors: dict[str, Any]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__torch__" in obj:
        return _as_torch(*tensors[obj["__torch__"]])
    if "__numpy__" in obj:
        return _as_numpy(*tensors[obj["__numpy__"]]).reshape(obj["shape"])
    if "__nd__" in obj:
        return np.array(obj["data"], dtype=np.dtype(obj["__nd__"])).reshape(obj["shape"])
    if "__np__" in obj:
        return np.dtype(obj["__np__"]).type(obj["v"])
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    if "__items__" in obj:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in obj["__items__"]}
    return {k: _decode(v, tensors) for k, v in obj.items()}


def _entry_digest(h: Any, name: str, dtype: str, shape: tuple, data: bytes) -> None:
    h.update(f"{name}:{dtype}:{shape}".encode())
    if data:
        h.update(data)


def _raw(t: Any) -> tuple[str, tuple, bytes]:
    """(torch's dtype name, shape, little-endian bytes) of a tensor or numpy array to be written."""
    if isinstance(t, np.ndarray):
        return _NUMPY[t.dtype], tuple(t.shape), t.tobytes()
    import torch

    return str(t.dtype), tuple(t.shape), t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""


def dumps(state: Any) -> bytes:
    """The bytes of a state file holding ``state``.

    Raises :class:`StateTypeError` (one line: the type and its place in ``state``) for a
    value that would not come back as it went in (see :data:`ACCEPTED`).
    """
    tensors: dict[str, Any] = {}
    text = json.dumps(_encode(state, tensors, "state"))
    h = hashlib.sha256(text.encode())
    for name in sorted(tensors, key=int):
        _entry_digest(h, name, *_raw(tensors[name]))
    meta = {"format": FORMAT, "state": text, "sha256": h.hexdigest()}
    if any(not isinstance(t, np.ndarray) for t in tensors.values()):
        import torch
        from safetensors.torch import save

        return save({k: v if not isinstance(v, np.ndarray) else torch.from_numpy(v) for k, v in tensors.items()},
                    metadata=meta)
    from safetensors.numpy import save

    return save(tensors, metadata=meta)


def loads(data: bytes) -> Any:
    """Parse and verify a state file; raise :class:`StateFileError` if it is not intact."""
    from safetensors import SafetensorError, deserialize

    try:
        meta = _metadata(data)
        entries = {name: (info["dtype"], tuple(info["shape"]), bytes(info["data"])) for name, info in deserialize(data)}
    except (SafetensorError, ValueError, OSError, KeyError, TypeError) as exc:
        raise StateFileError(f"not a state file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise StateFileError(f"unknown state format {meta.get('format')!r}")
    text = meta.get("state", "")
    h = hashlib.sha256(text.encode())
    try:
        names = sorted(entries, key=int)
        for name in names:
            code, shape, raw = entries[name]
            _entry_digest(h, name, _CODES[code][0], shape, raw)
    except (KeyError, ValueError) as exc:
        raise StateFileError(f"not a state file (unknown entry {exc})") from None
    if h.hexdigest() != meta.get("sha256"):
        raise StateFileError("checksum mismatch (the file was changed or truncated)")
    try:
        return _decode(json.loads(text), entries)
    except StateFileError:
        raise
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise StateFileError(f"malformed state ({exc})") from None


def _as_numpy(code: str, shape: tuple, raw: bytes) -> np.ndarray:
    """Entry ``raw`` (little-endian, as safetensors stores it) as a fresh, writable numpy array."""
    np_type = _CODES[code][1]
    if np_type is None:
        raise ValueError(f"a {code} entry cannot be a numpy array")
    return np.frombuffer(raw, dtype=np.dtype(np_type).newbyteorder("<")).astype(np_type).reshape(shape)


def _as_torch(code: str, shape: tuple, raw: bytes) -> Any:
    """Entry ``raw`` as a fresh, writable CPU tensor (torch is imported here, and only here)."""
    try:
        import torch
    except ImportError:
        raise StateFileError("this state file holds torch tensors: reading it needs torch") from None
    if _CODES[code][1] is not None:
        return torch.from_numpy(_as_numpy(code, shape, raw))
    dtype = getattr(torch, _CODES[code][0].split(".", 1)[1])  # bfloat16, float8: no numpy dtype
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(shape) if raw else torch.empty(shape, dtype=dtype)


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
