"""Per-sample K×K Gram matrices ``M = G Gᵀ`` of a surrogate's log-probability Jacobian.

``G = ∂ log softmax(f(x; θ)) / ∂θ ∈ R^{K×P}``; the thief's update under answer ``a`` is ``Gᵀa``,
so every angle MAD and GRAD² need is ``cos(Gᵀa, Gᵀb) = aᵀMb / sqrt(aᵀMa · bᵀMb)``.

Engines:
- ``last_layer``: G restricted to the last linear layer (weight and bias) has the exact closed
  form ``Gᵀa = (a − p·1ᵀa) ⊗ [h; 1]``, so ``M = ‖[h; 1]‖² (I − p1ᵀ)ᵀ(I − p1ᵀ)`` — one surrogate
  forward, O(K²) per sample, no backward pass.
- ``full``: M over selected parameters. For Linear, Conv2d and (eval-mode) BatchNorm2d layers
  it uses the per-sample-gradient identity: a layer's Jacobian is its output gradient times its
  input activations (``∂ log p_k/∂W = δ_k hᵀ``), so one forward, one backward batched over the K
  classes and per-layer products give M exactly; other layers fall back to ``torch.func``
  (vmap over the batch of reverse-mode Jacobians). Both run in chunks so memory stays bounded.
- ``identity``: G = I (the MAD ablation).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
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


GramEngine = Literal["auto", "outer", "jacobian"]

#: Layers the outer-product engine handles exactly (every selected parameter must be in one).
_OUTER_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm2d)


def _outer_supported(model: nn.Module, params: dict[str, Tensor]) -> bool:
    """Every selected parameter is the weight or bias of a layer the outer engine handles."""
    owners = {n.rpartition(".")[0] for n in params}
    modules = dict(model.named_modules())
    for name in owners:
        mod = modules.get(name)
        if not isinstance(mod, _OUTER_LAYERS):
            return False
        if isinstance(mod, nn.Conv2d) and (
            mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod.padding, str)
        ):
            return False
        if isinstance(mod, nn.BatchNorm2d) and (mod.training or mod.running_var is None):
            return False
    return all(n.rpartition(".")[2] in ("weight", "bias") for n in params)


def _layer_gram(mod: nn.Module, h: Tensor, d: Tensor, which: set[str]) -> Tensor:
    """One layer's share of M [B, K, K] from its input ``h`` [B, ...] and output gradients
    ``d`` [K, B, ...] (``d[k]`` = ∂ log p_k / ∂ output, per sample)."""
    dd = d.double()
    if isinstance(mod, nn.Linear):
        g = torch.einsum("kbo,lbo->bkl", dd, dd)
        m = torch.zeros_like(g)
        if "weight" in which:
            m = m + g * h.double().pow(2).sum(dim=1)[:, None, None]
        if "bias" in which:
            m = m + g
        return m
    if isinstance(mod, nn.Conv2d):
        assert not isinstance(mod.padding, str)  # 'same' / 'valid' are refused by _outer_supported
        u = F.unfold(h, mod.kernel_size, mod.dilation, mod.padding, mod.stride)  # [B, C·k², P]
        return _positions_gram(u, d.flatten(3), which)  # d → [K, B, out, P]
    assert isinstance(mod, nn.BatchNorm2d)
    assert mod.running_mean is not None and mod.running_var is not None
    shape = (1, -1, 1, 1)
    xhat = (h - mod.running_mean.view(shape)) / torch.sqrt(mod.running_var.view(shape) + mod.eps)
    m = torch.zeros(h.shape[0], dd.shape[0], dd.shape[0], dtype=torch.float64, device=h.device)
    if "weight" in which:
        jw = (dd * xhat.double()[None]).sum(dim=(3, 4))  # [K, B, C]
        m = m + torch.einsum("kbc,lbc->bkl", jw, jw)
    if "bias" in which:
        jb = dd.sum(dim=(3, 4))
        m = m + torch.einsum("kbc,lbc->bkl", jb, jb)
    return m


def _positions_gram(u: Tensor, d: Tensor, which: set[str], form: str = "auto") -> Tensor:
    """M share of a layer applied at P positions: inputs ``u`` [B, I, P], gradients
    ``d`` [K, B, O, P]; the weight's per-sample Jacobian is ``J_k = Σ_p d_k[:, p] u[:, p]ᵀ``.

    Two exact forms, the cheaper one chosen by its multiply count: ``jacobian`` forms every
    ``J_k`` (O·I numbers) and their inner products; ``kernel`` uses ``⟨J_k, J_l⟩ =
    Σ_{p,q} (uᵀu)_{pq} d_k[:, p]·d_l[:, q]`` (small when P is small and O·I large, as in a
    late convolution). Products run in the model's precision (as the Jacobian engine's
    Jacobians), the final sums over classes in float64.
    """
    k, b, o, p = d.shape
    i = u.shape[1]
    m = torch.zeros(b, k, k, dtype=torch.float64, device=u.device)
    if "weight" in which:
        if form == "auto":
            explicit = k * o * i * p + k * k * o * i
            kernel = p * p * i + k * o * p * p + k * k * o * p
            form = "jacobian" if explicit <= kernel else "kernel"
        dk = d.permute(1, 0, 2, 3).reshape(b, k * o, p)  # [B, K·O, P]
        if form == "jacobian":
            j = (dk @ u.transpose(1, 2)).reshape(b, k, o * i).double()  # [B, K, O·I]
            m = m + j @ j.transpose(1, 2)
        else:
            gu = u.transpose(1, 2) @ u  # [B, P, P]
            t = (dk @ gu).reshape(b, k, o * p).double()
            m = m + t @ dk.reshape(b, k, o * p).double().transpose(1, 2)
    if "bias" in which:
        jb = d.sum(dim=3).double()
        m = m + torch.einsum("kbo,lbo->bkl", jb, jb)
    return m


def outer_gram(model: nn.Module, x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """M [B, K, K] over ``params`` by the per-sample-gradient identity (eval mode; every
    parameter in a layer :func:`_outer_supported` accepts). Rows are independent."""
    modules = dict(model.named_modules())
    which: dict[str, set[str]] = {}
    for n in params:
        owner, _, kind = n.rpartition(".")
        which.setdefault(owner, set()).add(kind)
    inputs: dict[str, Tensor] = {}
    taps: dict[str, Tensor] = {}

    def hook(name: str):  # type: ignore[no-untyped-def]
        def record(mod: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> Tensor:
            if name in inputs:
                raise _OuterUnsupportedError(f"{name} runs twice in one forward (shared weights)")
            if isinstance(mod, nn.Linear) and args[0].ndim != 2:
                raise _OuterUnsupportedError(f"{name} is applied over extra dimensions")
            inputs[name] = args[0].detach()
            # a zero leaf added to the output: its gradient is ∂ log p/∂ output, and the graph
            # runs through every later layer even when the parameters are frozen
            taps[name] = torch.zeros_like(out, requires_grad=True)
            return out + taps[name]

        return record

    handles = [modules[name].register_forward_hook(hook(name)) for name in which]
    try:
        with torch.enable_grad():
            logp = torch.log_softmax(model(x), dim=1)
            k = logp.shape[1]
            onehot = torch.eye(k, dtype=logp.dtype, device=logp.device)[:, None, :]
            names = list(which)
            grads = torch.autograd.grad(
                logp,
                [taps[n] for n in names],
                grad_outputs=onehot.expand(k, *logp.shape).contiguous(),
                is_grads_batched=True,
            )
    finally:
        for h in handles:
            h.remove()
    m = torch.zeros(x.shape[0], k, k, dtype=torch.float64, device=x.device)
    for name, d in zip(names, grads, strict=True):
        m = m + _layer_gram(modules[name], inputs[name], d.detach(), which[name])
    return m


class _OuterUnsupportedError(RuntimeError):
    """Seen during the forward: a layer the outer engine cannot take (shared, or over extra
    dimensions)."""


def full_gram(
    model: nn.Module,
    x: Tensor,
    layers: Sequence[str] | None = None,
    engine: GramEngine = "auto",
) -> Tensor:
    """M [B, K, K] over the selected parameters (all when ``layers`` is None).

    ``engine``: ``outer`` (per-sample-gradient identity, Linear / Conv2d / BatchNorm2d layers),
    ``jacobian`` (``torch.func`` per-sample Jacobians, any layer) or ``auto`` (outer when every
    selected parameter allows it).
    """
    was_training = model.training
    model.eval()
    try:
        params = select_parameters(model, layers)
        outer = engine == "outer" or (engine == "auto" and _outer_supported(model, params))
        if engine == "outer" and not _outer_supported(model, params):
            raise ConfigError(
                "gram engine 'outer' handles Linear, Conv2d (groups 1, zero padding) and "
                "eval-mode BatchNorm2d weights and biases; use engine='jacobian' for this model"
            )
        with torch.no_grad():
            k = int(model(x[:1]).shape[1])
        if outer:
            chunk = _chunk_rows(k * max(p.numel() for p in params.values()))
            try:
                return torch.cat(
                    [outer_gram(model, x[i : i + chunk], params) for i in range(0, len(x), chunk)]
                )
            except _OuterUnsupportedError as e:
                if engine == "outer":
                    raise ConfigError(f"gram engine 'outer': {e}; use engine='jacobian'") from None
        chunk = _chunk_rows(k * sum(p.numel() for p in params.values()))
        return torch.cat(
            [_jacobian_gram(model, x[i : i + chunk], params) for i in range(0, len(x), chunk)]
        )
    finally:
        model.train(was_training)


def _chunk_rows(per_row: int) -> int:
    """Rows per chunk so a chunk's per-sample tensors hold at most JACOBIAN_CHUNK_ELEMENTS."""
    return max(1, JACOBIAN_CHUNK_ELEMENTS // max(1, per_row))


def _jacobian_gram(model: nn.Module, x: Tensor, params: dict[str, Tensor]) -> Tensor:
    """M [B, K, K] from explicit per-sample Jacobians (any differentiable model)."""
    jac = jacobian_log_probs(model, x, params)
    m: Tensor | None = None
    for j in jac.values():
        flat = j.flatten(2).double()
        g = flat @ flat.transpose(1, 2)
        m = g if m is None else m + g
    assert m is not None
    return m
