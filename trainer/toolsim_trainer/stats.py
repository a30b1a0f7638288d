"""Confidence intervals for evaluation metrics.

A 30- or 100-question evaluation moves by several points between runs of the same policy, so
every EM/F1 in a table carries a percentile-bootstrap 95% interval: two runs whose intervals
overlap widely are not told apart by that evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bootstrap_ci(
    values: Sequence[float], n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``values`` (``n`` resamples, seeded)."""
    if not values:
        raise ValueError("bootstrap_ci needs at least one value")
    if n < 1:
        raise ValueError(f"n (resamples) must be >= 1, got {n}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), e.g. 0.95; got {level}")
    data = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(data), size=(n, len(data)))
    means = data[picks].mean(axis=1)
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


def paired_bootstrap_diff(
    a: Sequence[float], b: Sequence[float], n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """Mean of ``a - b`` over paired items (the same questions) and its percentile-bootstrap
    interval: the questions are resampled together, so per-question difficulty cancels and
    two runs whose own intervals overlap can still be told apart."""
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b, strict=True)]
    low, high = bootstrap_ci(diffs, n=n, seed=seed, level=level)
    return sum(diffs) / len(diffs), low, high
