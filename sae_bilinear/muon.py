"""Muon with a choice of arithmetic for its Newton–Schulz orthogonalisation.

Muon (Jordan et al., 2024) replaces each weight matrix's momentum-averaged gradient by the
nearest semi-orthogonal matrix, approximately ``U Vᵀ`` of its SVD ``U S Vᵀ``, computed by a few
Newton–Schulz iterations. ``torch.optim.Muon`` always runs those iterations in bfloat16. That is
fast on GPUs and on CPUs with native bf16 matrix units, but some CPUs emulate bf16 matmuls at a
few GFLOP/s, which made one Muon step cost tens of forward+backward passes of the SAE. Here the
dtype is a choice: ``"float32"``, ``"bfloat16"``, or ``"auto"`` — the faster of the two on the
parameter's device, measured once per device (:func:`fastest_ns_dtype`).

:class:`Muon` is checkpointable like any ``torch.optim.Optimizer`` (``state_dict`` /
``load_state_dict``); with ``ns_dtype="bfloat16"`` it takes the same steps as
``torch.optim.Muon``. An ``"auto"`` group records the dtype it resolved to in its param group,
so a run resumed from a checkpoint keeps the arithmetic it started with.

This module imports nothing of ours but :mod:`sae_bilinear.errors`.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Literal, cast

import torch
from jaxtyping import Float
from torch import Tensor
from typing_extensions import override

from sae_bilinear.errors import ConfigError
from sae_bilinear.values import check_choice, check_finite_float, check_int

NSDtype = Literal["float32", "bfloat16", "auto"]
NS_DTYPES: tuple[str, ...] = ("float32", "bfloat16", "auto")

QUINTIC_COEFFICIENTS: tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
"""Jordan et al.'s quintic ``p(σ) = aσ + bσ³ + cσ⁵``: steepest slope at 0 that still lands every
singular value near 1 in 5 steps (in roughly [0.7, 1.2], not exactly 1 — Muon does not need 1)."""

CONVERGENT_COEFFICIENTS: tuple[float, float, float] = (15 / 8, -10 / 8, 3 / 8)
"""The classical quintic Newton–Schulz iteration for the polar factor (``p(1) = 1``, ``p'(1) =
p''(1) = 0``): it converges to exactly ``U Vᵀ`` for singular values in (0, 1], more slowly."""

AdjustLR = Literal["original", "match_rms_adamw"]

_TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def orthogonalize(
    gradient: Float[Tensor, "rows cols"],
    steps: int = 5,
    coefficients: tuple[float, float, float] = QUINTIC_COEFFICIENTS,
    dtype: torch.dtype = torch.float32,
    eps: float = 1e-7,
) -> Float[Tensor, "rows cols"]:
    """Newton–Schulz approximation of ``U Vᵀ`` for ``gradient = U S Vᵀ``, computed in ``dtype``.

    Each step maps ``X → aX + b(XXᵀ)X + c(XXᵀ)²X``, i.e. every singular value ``σ → p(σ)``. The
    input is first divided by its Frobenius norm so that every ``σ ≤ 1``. The Gram matrix is
    taken on the short side (a tall matrix is transposed), which is the cheaper product.
    Returns a new tensor in ``dtype``.
    """
    if gradient.ndim != 2:
        raise ValueError(f"orthogonalize needs a matrix, got shape {tuple(gradient.shape)}")
    a, b, c = coefficients
    tall = gradient.shape[0] > gradient.shape[1]
    x = gradient.to(dtype)
    if tall:
        x = x.mT
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.mT
        polynomial = torch.addmm(gram, gram, gram, beta=b, alpha=c)  # b·G + c·G²
        x = torch.addmm(x, polynomial, x, beta=a)  # a·X + (b·G + c·G²)·X
    return x.mT if tall else x


def _time_matmul(size: int, dtype: torch.dtype, device: torch.device, repeats: int = 3) -> float:
    """Best wall time of one ``size × size`` matmul (after a warm-up), in seconds."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, generator=generator, device=device).to(dtype)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    _ = a @ a  # warm-up: kernel selection, lazy initialisation
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        _ = a @ a
        sync()
        best = min(best, time.perf_counter() - start)
    return best


@functools.cache
def fastest_ns_dtype(device: str = "cpu") -> Literal["float32", "bfloat16"]:
    """The faster matmul dtype on ``device`` (``"float32"`` or ``"bfloat16"``), measured once.

    A few square matmuls of each dtype are timed (256 on a CPU, where slow bf16 emulation runs
    near 1 GFLOP/s, 2048 on an accelerator) and the result is cached per device for the process.
    A device that cannot run bf16 matmuls gets ``"float32"``.
    """
    target = torch.device(device)
    size = 256 if target.type == "cpu" else 2048
    try:
        bf16 = _time_matmul(size, torch.bfloat16, target)
    except (RuntimeError, TypeError):
        return "float32"
    return "bfloat16" if bf16 < _time_matmul(size, torch.float32, target) else "float32"


def resolve_ns_dtype(ns_dtype: str, device: torch.device | str) -> Literal["float32", "bfloat16"]:
    """``ns_dtype`` itself, or for ``"auto"`` the measured faster dtype on ``device``."""
    check_ns_dtype(ns_dtype)
    if ns_dtype == "auto":
        return fastest_ns_dtype(str(torch.device(device)))
    return cast(Literal["float32", "bfloat16"], ns_dtype)


def check_ns_dtype(ns_dtype: object, field: str = "ns_dtype") -> None:
    """A :class:`ConfigError` naming ``field`` unless ``ns_dtype`` is one of :data:`NS_DTYPES`."""
    check_choice(field, ns_dtype, NS_DTYPES)


def adjusted_lr(lr: float, shape: torch.Size, rule: str) -> float:
    """The per-matrix learning rate: ``"original"`` scales by ``√max(1, rows/cols)`` (Jordan),
    ``"match_rms_adamw"`` by ``0.2·√max(rows, cols)`` (Moonshot, arXiv 2502.16982)."""
    rows, cols = shape[0], shape[1]
    if rule == "original":
        return lr * math.sqrt(max(1.0, rows / cols))
    return lr * 0.2 * math.sqrt(max(rows, cols))


class Muon(torch.optim.Optimizer):
    """Muon for 2-D parameters: momentum, then Newton–Schulz orthogonalisation in ``ns_dtype``.

    Per matrix ``W`` with gradient ``g``: ``m ← μm + (1−μ)g``; the update direction is ``m``
    (or ``g + μ(m − g)`` with ``nesterov``); ``O = orthogonalize(direction)``;
    ``W ← W(1 − lr·weight_decay) − lr'·O`` with ``lr' = adjusted_lr(lr, W.shape, adjust_lr)``.

    Args:
        params: 2-D parameters (biases and other tensors belong to another optimiser).
        lr: learning rate.
        momentum: μ in [0, 1).
        nesterov: Nesterov-style look-ahead of the momentum.
        weight_decay: decoupled weight decay.
        ns_steps: Newton–Schulz steps.
        ns_coefficients: ``(a, b, c)`` of the quintic; :data:`QUINTIC_COEFFICIENTS` by default.
        ns_dtype: ``"float32"``, ``"bfloat16"`` (torch's choice) or ``"auto"`` (the faster on the
            parameters' device, measured once; the choice is then stored in the param group).
        adjust_lr: the per-shape learning-rate rule (see :func:`adjusted_lr`).
        eps: floor of the norm the direction is divided by.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        ns_steps: int = 5,
        ns_coefficients: tuple[float, float, float] = QUINTIC_COEFFICIENTS,
        ns_dtype: NSDtype = "auto",
        adjust_lr: AdjustLR = "original",
        eps: float = 1e-7,
    ):
        check_finite_float("Muon lr", lr, 0.0)
        check_finite_float("Muon momentum", momentum, 0.0, 1.0, hi_open=True)
        check_finite_float("Muon weight_decay", weight_decay, 0.0)
        check_finite_float("Muon eps", eps, 0.0)
        check_int("Muon ns_steps", ns_steps, 1, 100)
        check_ns_dtype(ns_dtype, "Muon ns_dtype")
        check_choice("Muon adjust_lr", adjust_lr, ("original", "match_rms_adamw"))
        defaults = {
            "lr": lr, "momentum": momentum, "nesterov": bool(nesterov), "weight_decay": weight_decay,
            "ns_steps": ns_steps, "ns_coefficients": tuple(float(v) for v in ns_coefficients), "ns_dtype": ns_dtype,
            "adjust_lr": adjust_lr, "eps": eps,
        }
        super().__init__(params, defaults)
        for group in self.param_groups:
            for p in group["params"]:
                if p.ndim != 2:
                    raise ConfigError(
                        f"Muon updates matrices only; got a parameter of shape {tuple(p.shape)} "
                        "(give biases to AdamW, e.g. with sae_bilinear.train.MuonWithAdamW)"
                    )

    @override
    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, p.grad, group)
        return loss

    def _update(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        if grad.is_sparse or torch.is_complex(p):
            raise RuntimeError("Muon supports dense real matrices only")
        if group["ns_dtype"] == "auto":
            # Resolved once and stored: state_dict then records the arithmetic actually used.
            group["ns_dtype"] = resolve_ns_dtype("auto", p.device)
        state = self.state[p]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(grad, memory_format=torch.preserve_format)
        buffer = state["momentum_buffer"]
        momentum = group["momentum"]
        buffer.lerp_(grad, 1 - momentum)
        direction = grad.lerp(buffer, momentum) if group["nesterov"] else buffer
        update = orthogonalize(
            direction, group["ns_steps"], group["ns_coefficients"], _TORCH_DTYPES[group["ns_dtype"]], group["eps"]
        )
        p.mul_(1 - group["lr"] * group["weight_decay"])
        p.add_(update, alpha=-adjusted_lr(group["lr"], p.shape, group["adjust_lr"]))
