"""Per-sample K×K Gram matrices ``M = G Gᵀ`` of a surrogate's log-probability Jacobian.

``G = ∂ log softmax(f(x; θ)) / ∂θ ∈ R^{K×P}``; the thief's update under answer ``a`` is ``Gᵀa``,
so every angle MAD and GRAD² need is ``cos(Gᵀa, Gᵀb) = aᵀMb / sqrt(aᵀMa · bᵀMb)``.

Engines:
- ``last_layer``: G restricted to the last linear layer (weight and bias) has the exact closed
  form ``Gᵀa = (a − p·1ᵀa) ⊗ [h; 1]``, so ``M = ‖[h; 1]‖² (I − p1ᵀ)ᵀ(I − p1ᵀ)`` — one surrogate
  forward, O(K²) per sample, no backward pass.
- ``full``: the Jacobian of selected parameters by ``torch.func`` (vmap over the batch of
  reverse-mode Jacobians), reduced to M in chunks so memory stays bounded.
- ``identity``: G = I (the MAD ablation).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev, vmap

from stealproof.errors import ConfigError

#: Float elements a chunk of per-sample Jacobians may hold (~256 MB in float32).
JACOBIAN_CHUNK_ELEMENTS = 64_000_000


def last_layer_parts(surrogate: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """(probabilities p [B, K], squared norm ‖[h; 1]‖² [B]) from one surrogate forward."""
    features = getattr(surrogate, "features", None)
    head = getattr(surrogate, "head", None)
    if features is None or head is None:
        raise ConfigError("the last_layer engine needs a surrogate with features() and head()")
    h = features(x)
    logits = head()(h)
    h_sq = h.flatten(1).pow(2).sum(dim=1) + 1.0  # + 1 for the bias
    return torch.softmax(logits.double(), dim=1), h_sq.double()


def last_layer_gram(p: Tensor, h_sq: Tensor | None = None) -> Tensor:
    """``M = ‖h'‖² (I − p1ᵀ)ᵀ(I − p1ᵀ)`` for probabilities p [B, K] (h_sq=None → scale 1)."""
    b, k = p.shape
    eye = torch.eye(k, dtype=p.dtype, device=p.device).expand(b, k, k)
    a = eye - p[:, :, None]  # A[i, j] = δ_ij − p_i  (A a = a − p·Σa)
    m = a.transpose(1, 2) @ a
    return m if h_sq is None else m * h_sq[:, None, None]


def identity_gram(b: int, k: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The Gram matrix of G = I."""
    return torch.eye(k, dtype=dtype, device=device).expand(b, k, k).clone()


def select_parameters(model: nn.Module, layers: Sequence[str] | None) -> dict[str, Tensor]:
    """Parameters whose names start with one of ``layers`` (all when None), detached."""
    named = dict(model.named_parameters())
    if layers is None:
        chosen = named
    else:
        chosen = {n: p for n, p in named.items() if any(n.startswith(pre) for pre in layers)}
        if not chosen:
            raise ConfigError(
                f"layers: no parameter name starts with any of {list(layers)}; "
                f"names are {list(named)}"
            )
    return {n: p.detach() for n, p in chosen.items()}


def jacobian_log_probs(model: nn.Module, x: Tensor, params: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-sample Jacobians of log softmax w.r.t. ``params``: name → [B, K, *param.shape]."""
    fixed = {n: p.detach() for n, p in model.named_parameters() if n not in params}
    buffers = dict(model.named_buffers())

    def logp(sel: dict[str, Tensor], x1: Tensor) -> Tensor:
        out = functional_call(model, ({**fixed, **sel}, buffers), (x1[None],))
        return torch.log_softmax(out, dim=-1)[0]

    jac: dict[str, Tensor] = vmap(jacrev(logp), in_dims=(None, 0))(params, x)
    return jac


def full_gram(model: nn.Module, x: Tensor, layers: Sequence[str] | None = None) -> Tensor:
    """M [B, K, K] from the Jacobian of the selected parameters (all when ``layers`` is None)."""
    was_training = model.training
    model.eval()
    try:
        params = select_parameters(model, layers)
        n_params = sum(p.numel() for p in params.values())
        with torch.no_grad():
            k = int(model(x[:1]).shape[1])
        chunk = max(1, JACOBIAN_CHUNK_ELEMENTS // max(1, k * n_params))
        parts = []
        for i in range(0, x.shape[0], chunk):
            jac = jacobian_log_probs(model, x[i : i + chunk], params)
            m = None
            for j in jac.values():
                flat = j.flatten(2).double()
                g = flat @ flat.transpose(1, 2)
                m = g if m is None else m + g
            assert m is not None
            parts.append(m)
    finally:
        model.train(was_training)
    return torch.cat(parts)
