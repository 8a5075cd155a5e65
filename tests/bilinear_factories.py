"""Small bilinear SAEs with random weights, shared by the analysis, similarity and page tests.

Imported by name (``from bilinear_factories import make_sae``): pytest puts ``tests/`` on
``sys.path`` for test modules outside a package.
"""

from __future__ import annotations

import torch

from sae_bilinear import BilinearSAE, BilinearSAEConfig


def make_sae(d=6, F=12, variant="vanilla", lifted=False, bottleneck=None, seed=0, dtype="float64") -> BilinearSAE:
    torch.manual_seed(seed)
    sae = BilinearSAE(
        BilinearSAEConfig(d_in=d, d_sae=F, variant=variant, lifted=lifted, bottleneck=bottleneck, dtype=dtype)
    )
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn_like(p))
    return sae


def permuted_copy(sae: BilinearSAE, swap_lr: bool = False, rotate_bottleneck: bool = False) -> BilinearSAE:
    other = BilinearSAE(sae.cfg)
    perm = torch.randperm(sae.cfg.d_sae)
    with torch.no_grad():
        left, right = sae.W_left[perm], sae.W_right[perm]
        other.W_left.copy_(right if swap_lr else left)
        other.W_right.copy_(left if swap_lr else right)
        if sae.cfg.lifted:
            bl, br = sae.b_left[perm], sae.b_right[perm]
            other.b_left.copy_(br if swap_lr else bl)
            other.b_right.copy_(bl if swap_lr else br)
        if sae.W_down is not None:
            D = sae.W_down[:, perm]
            if rotate_bottleneck:
                D = torch.linalg.qr(torch.randn(D.shape[0], D.shape[0], dtype=D.dtype)).Q @ D
            other.W_down.copy_(D)
    return other
