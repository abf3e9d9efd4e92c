"""The default engine: everything in this process, one call after another (no Ray import)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from hpctl.engines.base import Engine, Outcome, call


class LocalEngine(Engine):
    """Runs each call here, in order: exactly what hpctl did before engines existed."""

    name = "local"
    parallel = False

    def map(self, fn: Callable[..., Any], calls: Sequence[tuple], *,
            on_result: Callable[[int, Outcome], None] | None = None,
            in_process: Callable[[int], dict[str, Any]] | None = None) -> list[Outcome]:
        out = []
        for i, args in enumerate(calls):
            outcome = call(fn, *args, **(in_process(i) if in_process else {}))
            out.append(outcome)
            if on_result is not None:
                on_result(i, outcome)
        return out
