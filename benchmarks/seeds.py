"""The ``--seeds`` syntax the benchmarks share: ``N`` (seeds 0 to N-1), ``A-B`` (that range, ``1-1``: seed
1 alone, one part of a long run) or a comma list (``0,5``)."""

from __future__ import annotations


def parse_seeds(text: str) -> list[int]:
    """The seeds ``text`` names; ValueError with a one-line message for anything else."""
    text = str(text).strip()
    try:
        if "-" in text:
            a, b = text.split("-", 1)
            seeds = list(range(int(a), int(b) + 1))
        elif "," in text:
            seeds = [int(s) for s in text.split(",") if s.strip()]
        else:
            seeds = list(range(int(text)))
    except ValueError:
        raise ValueError(f"--seeds takes a count (3), a range (1-2) or a comma list (0,5), got {text!r}") from None
    if not seeds or min(seeds) < 0:
        raise ValueError(f"--seeds {text!r} names no seed (seed 0 alone: 0-0)")
    return seeds
