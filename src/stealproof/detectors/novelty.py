"""Source-agnostic novelty scores: how unlike the defender's real images a query is.

Model-Guardian's sub-detectors each learn one synthetic source; a generator none of them saw
(the leave-one-source-out case) can fall between them. The scores here need no synthetic
source at all: they are fitted on real images only, so they stay honest for every held-out
source (our choice; the paper does not use them).

:func:`local_outlier_ratio` is a simplified *local outlier factor* (Breunig et al., 2000) in
pixel space: a query's mean reachability distance to its ``k`` nearest reference images,
divided by those neighbours' own ``k``-distances inside the reference set. A real image lies
about as close to its neighbours as they lie to theirs (ratio near 1); a generated image that
is plausible on average but off the data manifold lies farther (ratio above 1). Dividing by
the neighbours' ``k``-distance makes the score comparable between dense and sparse regions of
the data (e.g. common and rare ways of writing a digit).
"""

from __future__ import annotations

import torch
from torch import Tensor

from stealproof.errors import InputValidationError


def _flat(x: Tensor) -> Tensor:
    return x.detach().reshape(x.shape[0], -1).float()


def knn_distances(
    x: Tensor, reference: Tensor, k: int, *, batch_size: int = 256, exclude_self: bool = False
) -> tuple[Tensor, Tensor]:
    """The ``k`` smallest Euclidean distances from each row of ``x`` to the rows of
    ``reference`` (both flattened per row), ascending, and the indices of those rows:
    ``([B, k], [B, k])``. With ``exclude_self`` (``x`` is ``reference``), a row is not its own
    neighbour."""
    xf, rf = _flat(x), _flat(reference).to(x.device)
    if xf.shape[1] != rf.shape[1]:
        raise InputValidationError(
            f"x: {xf.shape[1]} values per row, the reference has {rf.shape[1]}"
        )
    need = k + (1 if exclude_self else 0)
    if not 1 <= need <= rf.shape[0]:
        raise InputValidationError(
            f"k: expected 1 to {rf.shape[0] - (1 if exclude_self else 0)}, got {k}"
        )
    dists, idx = [], []
    for i in range(0, xf.shape[0], batch_size):
        d = torch.cdist(xf[i : i + batch_size], rf)
        if exclude_self:
            rows = torch.arange(i, i + d.shape[0], device=d.device)
            d[torch.arange(d.shape[0], device=d.device), rows] = float("inf")
        v, j = d.topk(k, dim=1, largest=False)
        dists.append(v)
        idx.append(j)
    return torch.cat(dists), torch.cat(idx)


def reference_k_distance(reference: Tensor, k: int, *, batch_size: int = 256) -> Tensor:
    """Each reference row's distance to its ``k``-th nearest *other* reference row, ``[R]``."""
    d, _ = knn_distances(reference, reference, k, batch_size=batch_size, exclude_self=True)
    return d[:, -1]


def local_outlier_ratio(
    x: Tensor,
    reference: Tensor,
    reference_kdist: Tensor,
    k: int,
    *,
    batch_size: int = 256,
) -> Tensor:
    """Simplified local outlier factor of each row of ``x``, ``[B]`` (higher: more novel).

    With ``o_1..o_k`` the ``k`` nearest reference rows of ``x`` and ``r(o)`` their
    ``k``-distances (:func:`reference_k_distance`), the score is
    ``mean_i max(d(x, o_i), r(o_i)) / mean_i r(o_i)``.
    """
    d, j = knn_distances(x, reference, k, batch_size=batch_size)
    r = reference_kdist.to(d)[j]
    return torch.maximum(d, r).mean(dim=1) / r.mean(dim=1).clamp_min(1e-12)
