"""The statistics of ownership verification: an exact test over the secret label draw.

Key inputs come in ``G`` groups; every key of group ``g`` carries the one secret label ``Y_g``,
drawn uniformly from the group's *allowed* classes (all ``K``, or the ``K − 1`` other than
``avoid[g]``, the victim's own majority answer on the group) and independently of everything
else. A suspect answers the ``n`` keys; ``counts[g, c]`` is how many keys of group ``g`` it
answered with class ``c``. The statistic is ``T = Σ_g counts[g, Y_g]``, the number of keys
answered with their secret label.

**Why the test is exact for any innocent model.** H0 says the suspect never saw the owner's
answers on the key (it was not distilled from the watermarked model): then its answers, hence
the whole table ``counts``, are independent of the secret labels, whatever the model is and
however it treats the key images. Conditioned on ``counts``, ``T`` is a sum of independent
terms ``counts[g, Y_g]``, each uniform over ``{counts[g, c] : c allowed for g}``. Its
distribution is computed exactly (a convolution over integer sums ``0..n``), and
``p = P_H0(T ≥ T_obs)`` is a conditional randomisation test over the owner's own coin flips:
``P(p ≤ α) ≤ α`` for every ``α`` and every innocent model, with no assumption about how
innocent models behave and no calibration.

**Why a per-key binomial is not valid here.** Keys that share a label are not independent
trials for an innocent model: one that maps a whole group's images (near-copies of one
prototype) to one class matches *all* of them or *none*. Treating the ``n`` keys as
``Bin(n, 1/K)`` then under-states the variance by a factor of the group size and accuses
innocents far more often than ``α`` (with 6 groups of 10 keys and ``K = 10``, an innocent
that hits two groups by chance — probability ≈ 14 % — gets a binomial p ≈ 1e-4).

**The floor.** Even a perfect clone cannot get ``p`` below ``P(T ≥ n) ≥ Π_g 1/|allowed_g|``
(the probability of guessing every group's label): with 6 groups and ``K = 10`` avoiding one
class, ``(1/9)^6 ≈ 1.9e-6``. A key set whose floor is ≥ ``α`` can never show theft at ``α``.

Calibration on independently trained reference models no longer enters the p-value (the test
needs none); their match rates and own exact p-values are reported as context, with a
Clopper–Pearson bound of their pooled per-key rate (indicative only, as keys of a group are not
independent trials).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from torch import Tensor

from stealproof.errors import ConfigError, InputValidationError

__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_CONFIDENCE",
    "Verdict",
    "binomial_sf",
    "check_alpha",
    "decide",
    "group_null_pmf",
    "group_p_value",
    "groups_matched",
    "min_p_value",
    "null_mean",
    "null_rate_upper",
]

#: Significance level of the decision unless one is chosen.
DEFAULT_ALPHA = 1e-3
#: Confidence of the (reported) upper bound of the reference models' match rate.
DEFAULT_CONFIDENCE = 0.999


def _count(value: object, name: str, low: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise InputValidationError(f"{name}: expected an integer ≥ {low}, got {value!r}")
    return value


def _prob(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise InputValidationError(f"{name}: expected a probability in [0, 1], got {value!r}")
    return float(value)


def _open_unit(value: object, name: str) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0.0 < value < 1.0
    if not ok:
        raise ConfigError(f"{name}: expected a number strictly between 0 and 1, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def check_alpha(alpha: object) -> float:
    """The significance level as a float, refused unless it lies in (0, 1)."""
    return _open_unit(alpha, "alpha")


def binomial_sf(k: int, n: int, p: float) -> float:
    """``P[X ≥ k]`` for ``X ~ Bin(n, p)``, exact to floating-point precision in both tails.

    Used for reporting only (see the module docstring: keys of a group are not independent
    trials, so this is not the ownership test).
    """
    n = _count(n, "n")
    if isinstance(k, bool) or not isinstance(k, int):
        raise InputValidationError(f"k: expected an integer, got {k!r}")
    p = _prob(p, "p")
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p == 0.0:
        return 0.0
    if p == 1.0:
        return 1.0
    from scipy.stats import binom

    return float(min(1.0, max(0.0, binom.sf(k - 1, n, p))))


def null_rate_upper(matches: int, trials: int, confidence: float = DEFAULT_CONFIDENCE) -> float:
    """One-sided Clopper–Pearson upper bound of a match rate seen as ``matches`` of ``trials``.

    Exact for independent trials; no trials means no information (the bound is 1).
    """
    trials = _count(trials, "trials")
    matches = _count(matches, "matches")
    if matches > trials:
        raise InputValidationError(f"matches: {matches} exceeds trials {trials}")
    confidence = _open_unit(confidence, "confidence")
    if trials == 0 or matches == trials:
        return 1.0
    if matches == 0:  # closed form: (1 − u)^trials = 1 − confidence
        return float(1.0 - (1.0 - confidence) ** (1.0 / trials))
    from scipy.stats import beta

    return float(beta.ppf(confidence, matches + 1, trials - matches))


# --------------------------------------------------------------------------- the exact test


def _int_array(x: object, name: str, ndim: int) -> NDArray[np.int64]:
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise InputValidationError(f"{name}: expected an integer tensor") from None
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise InputValidationError(f"{name}: expected integers, got {t.dtype}")
    if t.ndim != ndim:
        raise InputValidationError(f"{name}: expected {ndim} dimensions, got {list(t.shape)}")
    return np.asarray(t.detach().cpu().to(torch.int64).numpy(), dtype=np.int64)


def _check_table(
    counts: object, labels: object | None, avoid: object
) -> tuple[NDArray[np.int64], NDArray[np.int64] | None, NDArray[np.int64]]:
    """Validated ``counts [G, K] ≥ 0``, ``labels [G]`` in allowed classes, ``avoid [G]``."""
    c = _int_array(counts, "counts", 2)
    g, k = c.shape
    if g < 1 or k < 2:
        raise InputValidationError(f"counts: expected [G ≥ 1, K ≥ 2], got {list(c.shape)}")
    if (c < 0).any():
        raise InputValidationError("counts: expected non-negative counts")
    a = _int_array(avoid, "avoid", 1)
    if a.shape != (g,) or (a < -1).any() or (a >= k).any():
        raise InputValidationError(
            f"avoid: expected {g} classes in [-1, {k - 1}] (-1: none), got shape {list(a.shape)}"
        )
    y = None
    if labels is not None:
        y = _int_array(labels, "labels", 1)
        if y.shape != (g,) or (y < 0).any() or (y >= k).any():
            raise InputValidationError(f"labels: expected {g} classes in [0, {k - 1}]")
        if (y == a).any():
            raise InputValidationError("labels: a group's label equals the class it avoids")
    return c, y, a


def _allowed(k: int, avoid: NDArray[np.int64]) -> NDArray[np.bool_]:
    """``[G, K]`` mask of the classes each group's label was drawn from."""
    mask = np.ones((avoid.shape[0], k), dtype=bool)
    rows = np.nonzero(avoid >= 0)[0]
    mask[rows, avoid[rows]] = False
    return mask


def group_null_pmf(counts: Tensor, avoid: Tensor) -> NDArray[np.float64]:
    """``pmf[t] = P_H0(T = t)`` for ``t = 0..n``: the exact distribution of the statistic.

    Dynamic programming over the groups: the distribution of the partial sum is shifted by
    each allowed value ``counts[g, c]`` and weighted ``1/|allowed_g|`` (equal values merged),
    so the cost is ``O(G · K · n)`` in float64. Every partial path has probability at least
    the floor ``Π 1/|allowed_g|``, so nothing underflows above ~1e-300.
    """
    c, _, a = _check_table(counts, None, avoid)
    return _pmf(c, a)


def _pmf(c: NDArray[np.int64], a: NDArray[np.int64]) -> NDArray[np.float64]:
    n = int(c.sum())
    allowed = _allowed(c.shape[1], a)
    dist = np.zeros(n + 1, dtype=np.float64)
    dist[0] = 1.0
    hi = 0  # largest reachable partial sum so far
    for g in range(c.shape[0]):
        vals, mult = np.unique(c[g][allowed[g]], return_counts=True)
        w = mult / float(allowed[g].sum())
        new = np.zeros_like(dist)
        for v, wv in zip(vals.tolist(), w.tolist(), strict=True):
            new[v : v + hi + 1] += wv * dist[: hi + 1]
        hi += int(c[g].max())
        dist = new
    return dist


def group_p_value(counts: Tensor, labels: Tensor, avoid: Tensor) -> tuple[int, float]:
    """``(T_obs, P_H0(T ≥ T_obs))``: the exact one-sided p-value of the grouped key test.

    ``counts[g, c]``: the suspect's answers of class ``c`` on group ``g``'s keys; ``labels[g]``
    the group's secret label; ``avoid[g]`` the class it was drawn away from (-1: none).
    ``T_obs = Σ_g counts[g, labels[g]]``; under H0 (the suspect never saw the owner's answers)
    each group's label is uniform over its allowed classes, independently of the suspect, and
    ``P_H0(T ≥ T_obs)`` is summed from :func:`group_null_pmf` (see the module docstring for
    why this is valid for any innocent model). The p-value is never below
    :func:`min_p_value`.
    """
    c, y, a = _check_table(counts, labels, avoid)
    assert y is not None
    t_obs = int(c[np.arange(c.shape[0]), y].sum())
    tail = float(_pmf(c, a)[t_obs:].sum())
    return t_obs, min(1.0, max(tail, _floor(c.shape[1], a)))


def _floor(k: int, a: NDArray[np.int64]) -> float:
    excluded = int((a >= 0).sum())
    denominator: int = (k - 1) ** excluded * k ** (int(a.shape[0]) - excluded)
    return 1 / denominator  # an exact integer, rounded once


def min_p_value(avoid: Tensor, num_classes: int) -> float:
    """``Π_g 1/|allowed_g|``: the smallest p-value the key can give, even to a perfect clone.

    The true labels are one of the equally likely assignments, so ``P(T ≥ T_obs)`` is at
    least its probability. With 6 groups, ``K = 10`` and one avoided class: ``(1/9)^6``.
    """
    k = _count(num_classes, "num_classes", 2)
    a = _int_array(avoid, "avoid", 1)
    if (a < -1).any() or (a >= k).any():
        raise InputValidationError(f"avoid: expected classes in [-1, {k - 1}]")
    return _floor(k, a)


def null_mean(counts: Tensor, avoid: Tensor) -> float:
    """``E_H0[T] = Σ_g mean_{c allowed} counts[g, c]``: the matches expected by chance."""
    c, _, a = _check_table(counts, None, avoid)
    allowed = _allowed(c.shape[1], a)
    return float(((c * allowed).sum(axis=1) / allowed.sum(axis=1)).sum())


def groups_matched(counts: Tensor, labels: Tensor) -> int:
    """Groups whose secret label is the suspect's strict majority (most frequent) answer."""
    c = _int_array(counts, "counts", 2)
    y = _int_array(labels, "labels", 1)
    hit = c[np.arange(c.shape[0]), y]
    others = c.copy()
    others[np.arange(c.shape[0]), y] = -1
    return int((hit > others.max(axis=1)).sum())


# ------------------------------------------------------------------------------- the verdict


@dataclass(frozen=True)
class Verdict:
    """The outcome of one verification: the evidence, the exact p-value, the call, in words.

    ``matches`` is ``T`` (keys answered with their secret label) of ``n``; ``groups_matched``
    of ``groups`` groups have their label as the suspect's majority answer; ``chance`` is
    ``E_H0[T] / n`` given the suspect's answers; ``min_p`` the floor of the p-value. The
    ``reference_*`` fields are calibration *context*: they never change ``p_value``.
    """

    matches: int
    n: int
    groups: int
    groups_matched: int
    match_rate: float
    chance: float
    p_value: float
    min_p: float
    alpha: float
    stolen: bool
    text: str
    reference_names: tuple[str, ...] | None = None
    reference_match_rates: tuple[float, ...] | None = None
    reference_p_values: tuple[float, ...] | None = None
    reference_upper: float | None = None
    confidence: float | None = None

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able fields."""
        return asdict(self)


def fmt_p(p: float) -> str:
    """A p-value in a short human form."""
    return f"{p:.4g}" if p >= 1e-3 or p == 0.0 else f"{p:.2e}"


def decide(
    counts: Tensor,
    labels: Tensor,
    avoid: Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    reference_names: Sequence[str] | None = None,
    reference_matches: Sequence[int] | None = None,
    reference_p_values: Sequence[float] | None = None,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Verdict:
    """Run the exact group test on the suspect's ``counts [G, K]`` at level ``alpha``.

    "Stolen" means ``p < alpha``: a model that never saw the owner's answers scores ``T`` this
    high with probability below ``alpha``. Not rejecting is not a proof of innocence. The
    reference models (names, their ``T`` and exact p-values) are reported context only.
    """
    alpha = check_alpha(alpha)
    c, y, a = _check_table(counts, labels, avoid)
    assert y is not None
    g, k = c.shape
    n = int(c.sum())
    if n < 1:
        raise InputValidationError("counts: no key answers")
    t_obs, p = group_p_value(torch.from_numpy(c), torch.from_numpy(y), torch.from_numpy(a))
    floor = _floor(k, a)
    matched = groups_matched(torch.from_numpy(c), torch.from_numpy(y))
    chance = null_mean(torch.from_numpy(c), torch.from_numpy(a)) / n
    stolen = p < alpha
    rate = t_obs / n
    evidence = (
        f"{t_obs} of {n} key inputs ({100 * rate:.1f}%) got the secret label, in {matched} of "
        f"{g} groups the suspect's majority answer (chance {100 * chance:.1f}%)"
    )
    if stolen:
        text = (
            f"STOLEN at alpha = {alpha:g}: {evidence}; a model that never saw the owner's "
            f"answers scores this high with probability p = {fmt_p(p)} < {alpha:g} (exact test)"
        )
    else:
        text = (
            f"NOT SHOWN at alpha = {alpha:g}: {evidence}; p = {fmt_p(p)} ≥ {alpha:g}, so there "
            "is no evidence at this level that the suspect was derived from the watermarked "
            "model (this does not prove it was not)"
        )
    if floor >= alpha:
        text += (
            f"; the key set is too small to ever reach alpha = {alpha:g}: with {g} groups even "
            f"a perfect match gives p = {fmt_p(floor)} (make a key with more groups)"
        )
    refs: dict[str, Any] = {}
    if reference_matches is not None:
        names = tuple(reference_names or (f"reference-{i}" for i in range(len(reference_matches))))
        ms = tuple(int(m) for m in reference_matches)
        if len(names) != len(ms) or (
            reference_p_values is not None and len(reference_p_values) != len(ms)
        ):
            raise InputValidationError("references: expected one name, T and p-value per model")
        refs = {
            "reference_names": names,
            "reference_match_rates": tuple(m / n for m in ms),
            "reference_p_values": None
            if reference_p_values is None
            else tuple(float(q) for q in reference_p_values),
            "reference_upper": null_rate_upper(sum(ms), n * len(ms), confidence) if ms else None,
            "confidence": confidence,
        }
    return Verdict(
        matches=t_obs,
        n=n,
        groups=g,
        groups_matched=matched,
        match_rate=rate,
        chance=chance,
        p_value=p,
        min_p=floor,
        alpha=alpha,
        stolen=stolen,
        text=text,
        **refs,
    )
