"""Hand-written backward passes for the quadratic term ``gᵀKg`` of the kernel loss.

``K = (L̃L̃ᵀ) ∘ (R̃R̃ᵀ)`` (∘ the prefix weights ``(F − max(i,j))/F`` when ordered). Only
the quadratic term needs care: the cross term ``gᵀf`` is O(B·F) and stays with autograd.

Dense latents (:func:`dense_quadratic`)
    The F×F matrices are split into T×T blocks of ``tile`` rows and only the blocks
    ``I ≤ J`` are computed (K, the Gram matrices and ``gᵀ diag(s) g`` are symmetric).
    Forward: Gram blocks (``2F²d·(1+1/T)`` FLOPs), ``Kg`` (``2BF²``), ``q = Σ g∘Kg``.
    Backward with upstream ``s = ∂loss/∂q``:

    * ``∂q/∂g = 2 s ∘ Kg``, reusing ``Kg`` from the forward;
    * ``∂q/∂K = gᵀ diag(s) g`` (``BF²·(1+1/T)``, upper blocks only);
    * ``∂/∂G_L = ∂K ∘ W ∘ G_R`` and ``∂L̃ = 2 (∂G_L) L̃`` (``2F²d``), same for R;

    about ``6F²d + 3BF²`` in all, against ``12F²d + 6BF²`` for autograd on the plain
    formulation. The Gram blocks are kept from the forward (``≈ F²(1+1/T)`` numbers: upper
    blocks of two matrices) or, under a memory budget, recomputed block by block in the
    backward (``+2F²d``) so that only a few ``tile²`` buffers are ever alive.

Sparse latents (:func:`sparse_quadratic`)
    With ``g`` non-zero only at ``k`` indices per token (TopK), ``gᵀKg`` needs each
    token's k×k block of K: rows of L̃, R̃ gathered to ``[B, k, d]`` and batched matmuls,
    ``4Bk²d`` FLOPs forward and ``4Bk²d`` backward, no F² term. Gradients are scattered
    back into ``L``/``R`` with ``index_add_``.

Both functions expect inputs in the accumulation dtype (float32/float64) and switch
autocast off in their backward as well.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

DEFAULT_TILES = 8
"""Blocks per side when no tile size or budget is given: 1 + 1/8 of the ideal half work."""
MIN_TILE = 512
"""Smallest automatic tile: below it, per-block overhead and small matmuls cost more than symmetry saves."""
SPARSE_CHUNK_ELEMENTS = {"cpu": 2**22, "cuda": 2**27}
"""Default bound on the gathered ``[tokens, k, d]`` rows held at once by the sparse kernel, per
device type. On the CPU it keeps each buffer under glibc's 32 MiB mmap ceiling, so freed
buffers are reused instead of being page-faulted in anew on every call; on a GPU the
caching allocator has no such cost and larger chunks make larger batched matmuls."""


class TilePlan(NamedTuple):
    """How the dense kernel walks the F×F matrices."""

    tile: int
    """Rows per block (the last block may be shorter)."""
    save_grams: bool
    """Keep the Gram blocks from the forward (else recompute them in the backward)."""


def _tiles(d_sae: int, tile: int) -> list[tuple[int, int]]:
    return [(start, min(start + tile, d_sae)) for start in range(0, d_sae, tile)]


def plan_tiles(
    d_sae: int, element_size: int, tile_size: int | None = None, memory_budget: int | None = None
) -> TilePlan:
    """Choose the block size and whether the Gram blocks are kept.

    Args:
        d_sae: F.
        element_size: bytes per number (4 for float32).
        tile_size: rows per block; ``None`` picks ``max(MIN_TILE, ceil(F / DEFAULT_TILES))``
            (capped at F), or the largest that fits ``memory_budget``.
        memory_budget: bytes allowed for F×F-type buffers (Gram blocks kept for the
            backward plus the per-block temporaries; B×F buffers are not counted).
            ``None``: no limit. The Gram blocks are kept only if they fit with the
            temporaries; otherwise they are recomputed in the backward.

    Raises ValueError if even a 1-row tile does not fit the budget, or ``tile_size`` < 1.
    """
    if tile_size is not None and tile_size < 1:
        raise ValueError(f"tile_size must be a positive int, got {tile_size}")
    # Temporaries alive at once: forward K (+ 2 Gram blocks when recomputing);
    # backward M, a product and (recomputing) 2 Gram blocks: at most 4 tile² buffers.
    temporaries = 4

    def saved_bytes(tile: int) -> int:
        n_tiles = math.ceil(d_sae / tile)
        # Upper blocks I ≤ J of two Gram matrices (a full block for every pair).
        return 2 * (n_tiles * (n_tiles + 1) // 2) * tile * tile * element_size

    if memory_budget is None:
        tile = tile_size or min(d_sae, max(MIN_TILE, math.ceil(d_sae / DEFAULT_TILES)))
        return TilePlan(tile=min(tile, d_sae), save_grams=True)
    if tile_size is not None:
        tile = min(tile_size, d_sae)
        if saved_bytes(tile) + temporaries * tile * tile * element_size <= memory_budget:
            return TilePlan(tile=tile, save_grams=True)
        if temporaries * tile * tile * element_size <= memory_budget:
            return TilePlan(tile=tile, save_grams=False)
        raise ValueError(
            f"tile_size={tile_size} needs {temporaries * tile * tile * element_size} bytes of temporaries, "
            f"over memory_budget={memory_budget}"
        )
    auto = min(d_sae, max(MIN_TILE, math.ceil(d_sae / DEFAULT_TILES)))
    if saved_bytes(auto) + temporaries * auto * auto * element_size <= memory_budget:
        return TilePlan(tile=auto, save_grams=True)
    tile = min(d_sae, math.isqrt(memory_budget // (temporaries * element_size)))
    if tile >= 64:
        tile -= tile % 64  # friendlier to the matmul kernels
    if tile < 1:
        raise ValueError(f"memory_budget={memory_budget} bytes is too small for even a 1×1 tile")
    return TilePlan(tile=tile, save_grams=False)


def _gram_block(W: Tensor, b: Tensor | None, rows: tuple[int, int], cols: tuple[int, int]) -> Tensor:
    block = W[rows[0] : rows[1]] @ W[cols[0] : cols[1]].T
    if b is not None:
        block.addr_(b[rows[0] : rows[1]], b[cols[0] : cols[1]])
    return block


def _weigh_block(block: Tensor, w: Tensor | None, rows: tuple[int, int], cols: tuple[int, int]) -> None:
    """Multiply a block in place by the prefix weights ``min(w_i, w_j)`` (ordered loss)."""
    if w is None:
        return
    if rows == cols:
        wi = w[rows[0] : rows[1]]
        block.mul_(torch.minimum(wi.unsqueeze(1), wi.unsqueeze(0)))
    else:
        # Blocks I < J: every j > every i, so max(i, j) = j and the weight is w_j.
        assert rows[0] < cols[0]
        block.mul_(w[cols[0] : cols[1]].unsqueeze(0))


def _prefix_weights(d_sae: int, like: Tensor) -> Tensor:
    j = torch.arange(d_sae, device=like.device, dtype=like.dtype)
    return (d_sae - j) / d_sae


class _DenseQuadratic(torch.autograd.Function):
    """``q_b = g_bᵀ K g_b`` for dense ``g`` [B, F]; see the module docstring."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        g: Tensor,
        W_left: Tensor,
        W_right: Tensor,
        b_left: Tensor | None,
        b_right: Tensor | None,
        ordered: bool,
        tile: int,
        save_grams: bool,
    ) -> Tensor:
        d_sae = g.shape[-1]
        tiles = _tiles(d_sae, tile)
        w = _prefix_weights(d_sae, g) if ordered else None
        gT = g.T.contiguous()  # [F, B]: row blocks are contiguous
        kgT = torch.zeros_like(gT)
        grams: list[tuple[Tensor, Tensor]] = []
        for a, rows in enumerate(tiles):
            for cols in tiles[a:]:
                gl = _gram_block(W_left, b_left, rows, cols)
                gr = _gram_block(W_right, b_right, rows, cols)
                if save_grams:
                    grams.append((gl, gr))
                    k = gl * gr
                else:
                    k = gl.mul_(gr)
                    del gr
                _weigh_block(k, w, rows, cols)
                kgT[rows[0] : rows[1]].addmm_(k, gT[cols[0] : cols[1]])
                if rows != cols:
                    kgT[cols[0] : cols[1]].addmm_(k.T, gT[rows[0] : rows[1]])
                del k
        quadratic = (kgT * gT).sum(0)
        ctx.save_for_backward(gT, kgT, W_left, W_right, b_left, b_right)
        ctx.grams = grams if save_grams else None
        ctx.plan = (ordered, tile)
        return quadratic

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_q: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        gT, kgT, W_left, W_right, b_left, b_right = ctx.saved_tensors
        ordered, tile = ctx.plan
        need_g, need_l, need_r, need_bl, need_br = ctx.needs_input_grad[:5]
        grad_g = grad_l = grad_r = grad_bl = grad_br = None
        # Released here, not when the graph dies: a caller that keeps the loss (SAELens's
        # TrainStepOutput lives until the next step) must not hold F² numbers; each block is
        # dropped as soon as it is used. A second backward (retain_graph=True) recomputes them.
        grams, ctx.grams = ctx.grams, None
        if grams is not None:
            grams.reverse()  # pop() then walks the blocks in forward order
        with torch.autocast(device_type=gT.device.type, enabled=False):
            s = grad_q.to(gT.dtype)
            if need_g:
                grad_g = (kgT * (2.0 * s)).T
            if need_l or need_r or need_bl or need_br:
                d_sae = gT.shape[0]
                tiles = _tiles(d_sae, tile)
                w = _prefix_weights(d_sae, gT) if ordered else None
                gsT = gT * s
                grad_l = torch.zeros_like(W_left) if need_l else None
                grad_r = torch.zeros_like(W_right) if need_r else None
                grad_bl = torch.zeros_like(b_left) if need_bl else None
                grad_br = torch.zeros_like(b_right) if need_br else None
                for a, rows in enumerate(tiles):
                    for cols in tiles[a:]:
                        if grams is not None:
                            gl, gr = grams.pop()
                        else:
                            gl = _gram_block(W_left, b_left, rows, cols)
                            gr = _gram_block(W_right, b_right, rows, cols)
                        m = gsT[rows[0] : rows[1]] @ gT[cols[0] : cols[1]].T  # ∂q/∂K block
                        _weigh_block(m, w, rows, cols)
                        if need_l or need_bl:
                            d_gl = gr.mul_(m)  # the block is ours to overwrite (popped or recomputed)
                            _accumulate(grad_l, grad_bl, d_gl, W_left, b_left, rows, cols)
                            del d_gl
                        if need_r or need_br:
                            d_gr = m.mul_(gl)
                            _accumulate(grad_r, grad_br, d_gr, W_right, b_right, rows, cols)
                        del m, gl, gr
        return grad_g, grad_l, grad_r, grad_bl, grad_br, None, None, None


def _accumulate(
    grad_w: Tensor | None,
    grad_b: Tensor | None,
    d_gram: Tensor,
    W: Tensor,
    b: Tensor | None,
    rows: tuple[int, int],
    cols: tuple[int, int],
) -> None:
    """Add the block's share of ``∂W̃ = 2 (∂G) W̃`` (∂G symmetric; this block and its mirror)."""
    r, c = slice(*rows), slice(*cols)
    if grad_w is not None:
        grad_w[r].addmm_(d_gram, W[c], alpha=2.0)
        if rows != cols:
            grad_w[c].addmm_(d_gram.T, W[r], alpha=2.0)
    if grad_b is not None and b is not None:
        grad_b[r].addmv_(d_gram, b[c], alpha=2.0)
        if rows != cols:
            grad_b[c].addmv_(d_gram.T, b[r], alpha=2.0)


def dense_quadratic(
    coefficients: Tensor,
    W_left: Tensor,
    W_right: Tensor,
    b_left: Tensor | None,
    b_right: Tensor | None,
    ordered: bool = False,
    tile_size: int | None = None,
    memory_budget: int | None = None,
) -> Tensor:
    """``gᵀKg`` per token [B] with the hand-written, block-symmetric backward.

    Args:
        coefficients: ``g`` [B, F] in the accumulation dtype.
        W_left, W_right: [F, d]; b_left, b_right: [F] or None (unlifted).
        ordered: weight ``K_ij`` by ``(F − max(i,j))/F``.
        tile_size, memory_budget: see :func:`plan_tiles`.
    """
    plan = plan_tiles(coefficients.shape[-1], coefficients.element_size(), tile_size, memory_budget)
    return _DenseQuadratic.apply(coefficients, W_left, W_right, b_left, b_right, ordered, plan.tile, plan.save_grams)


class _SparseQuadratic(torch.autograd.Function):
    """``q_b = Σ_{a,c} v_ba v_bc K[idx_ba, idx_bc]`` for ``k`` active latents per token."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        values: Tensor,
        indices: Tensor,
        W_left: Tensor,
        W_right: Tensor,
        b_left: Tensor | None,
        b_right: Tensor | None,
        ordered: bool,
        chunk: int,
    ) -> Tensor:
        batch, k = values.shape
        d_sae = W_left.shape[0]
        weights = _pair_weights(indices, d_sae, values) if ordered else None
        kv = torch.empty_like(values)
        blocks_l, blocks_r = [], []
        rows = _RowBuffer(W_left, chunk * k)
        for start in range(0, batch, chunk):
            stop = min(start + chunk, batch)
            idx = indices[start:stop]
            gl = _gathered_gram(W_left, b_left, idx, rows)
            gr = _gathered_gram(W_right, b_right, idx, rows)
            blocks_l.append(gl)
            blocks_r.append(gr)
            kern = gl * gr
            if weights is not None:
                kern.mul_(weights[start:stop])
            kv[start:stop] = torch.bmm(kern, values[start:stop].unsqueeze(-1)).squeeze(-1)
        quadratic = (kv * values).sum(-1)
        ctx.save_for_backward(values, indices, kv, W_left, W_right, b_left, b_right)
        ctx.blocks = (torch.cat(blocks_l), torch.cat(blocks_r))
        ctx.plan = (ordered, chunk)
        return quadratic

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_q: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        values, indices, kv, W_left, W_right, b_left, b_right = ctx.saved_tensors
        ordered, chunk = ctx.plan
        blocks, ctx.blocks = ctx.blocks, None  # released now; a second backward recomputes them
        need_v = ctx.needs_input_grad[0]
        need_l, need_r, need_bl, need_br = ctx.needs_input_grad[2:6]
        grad_v = grad_l = grad_r = grad_bl = grad_br = None
        with torch.autocast(device_type=values.device.type, enabled=False):
            s = grad_q.to(values.dtype)
            if need_v:
                grad_v = kv * (2.0 * s).unsqueeze(-1)
            if need_l or need_r or need_bl or need_br:
                batch = values.shape[0]
                d_sae = W_left.shape[0]
                weights = _pair_weights(indices, d_sae, values) if ordered else None
                grad_l = torch.zeros_like(W_left) if need_l else None
                grad_r = torch.zeros_like(W_right) if need_r else None
                grad_bl = torch.zeros_like(b_left) if need_bl else None
                grad_br = torch.zeros_like(b_right) if need_br else None
                rows = _RowBuffer(W_left, chunk * values.shape[1])
                products = _RowBuffer(W_left, chunk * values.shape[1])
                for start in range(0, batch, chunk):
                    stop = min(start + chunk, batch)
                    idx = indices[start:stop]
                    v = values[start:stop] * s[start:stop].unsqueeze(-1)
                    # ∂q/∂K block: s v vᵀ (∘ weights), symmetric.
                    m = v.unsqueeze(-1) * values[start:stop].unsqueeze(-2)
                    if weights is not None:
                        m.mul_(weights[start:stop])
                    if blocks is not None:
                        gram_l, gram_r = blocks[0][start:stop], blocks[1][start:stop]
                    else:
                        gram_l = _gathered_gram(W_left, b_left, idx, rows)
                        gram_r = _gathered_gram(W_right, b_right, idx, rows)
                    if need_l or need_bl:
                        d_gl = m * gram_r
                        _scatter_gathered(grad_l, grad_bl, d_gl, W_left, b_left, idx, rows, products)
                    if need_r or need_br:
                        d_gr = m.mul_(gram_l)
                        _scatter_gathered(grad_r, grad_br, d_gr, W_right, b_right, idx, rows, products)
        return grad_v, None, grad_l, grad_r, grad_bl, grad_br, None, None


def _pair_weights(indices: Tensor, d_sae: int, like: Tensor) -> Tensor:
    """``(F − max(i_a, i_c))/F`` for every pair of a token's active latents [B, k, k]."""
    top = torch.maximum(indices.unsqueeze(-1), indices.unsqueeze(-2))
    return (d_sae - top).to(like.dtype) / d_sae


class _RowBuffer:
    """One reusable ``[rows, d]`` buffer for gathered weight rows (no fresh allocation per chunk)."""

    def __init__(self, like: Tensor, rows: int):
        self.buffer = torch.empty(rows, like.shape[1], dtype=like.dtype, device=like.device)

    def take(self, n: int, k: int) -> Tensor:
        return self.buffer[: n * k]


def _gather_rows(W: Tensor, idx: Tensor, buffer: _RowBuffer) -> Tensor:
    n, k = idx.shape
    out = buffer.take(n, k)
    torch.index_select(W, 0, idx.reshape(-1), out=out)
    return out.view(n, k, -1)


def _gathered_gram(W: Tensor, b: Tensor | None, idx: Tensor, buffer: _RowBuffer) -> Tensor:
    """``W̃[idx] W̃[idx]ᵀ`` per token: [n, k, k]."""
    n, k = idx.shape
    rows = _gather_rows(W, idx, buffer)
    if b is None:
        return torch.bmm(rows, rows.transpose(1, 2))
    bias = b.index_select(0, idx.reshape(-1)).view(n, k, 1)
    return torch.baddbmm(bias * bias.transpose(1, 2), rows, rows.transpose(1, 2))


def _scatter_gathered(
    grad_w: Tensor | None,
    grad_b: Tensor | None,
    d_gram: Tensor,
    W: Tensor,
    b: Tensor | None,
    idx: Tensor,
    rows_buffer: _RowBuffer,
    product_buffer: _RowBuffer,
) -> None:
    """``∂W̃[idx] = 2 (∂G) W̃[idx]`` per token, added into the rows ``idx`` of the gradient."""
    flat = idx.reshape(-1)
    n, k = idx.shape
    if grad_w is not None:
        rows = _gather_rows(W, idx, rows_buffer)
        product = product_buffer.take(n, k).view(n, k, -1)
        torch.bmm(d_gram, rows, out=product)
        grad_w.index_add_(0, flat, product.view(n * k, -1), alpha=2.0)
    if grad_b is not None and b is not None:
        bias = b.index_select(0, flat).view(n, k, 1)
        grad_b.index_add_(0, flat, torch.bmm(d_gram, bias).view(-1), alpha=2.0)


def sparse_chunk(tokens: int, k: int, d_in: int, max_elements: int | None = None, device_type: str = "cpu") -> int:
    """Tokens per chunk so that the gathered rows ``[chunk, k, d]`` stay under ``max_elements``."""
    budget = SPARSE_CHUNK_ELEMENTS.get(device_type, 2**27) if max_elements is None else max_elements
    return max(1, min(tokens, budget // max(1, k * d_in)))


def sparse_quadratic(
    values: Tensor,
    indices: Tensor,
    W_left: Tensor,
    W_right: Tensor,
    b_left: Tensor | None,
    b_right: Tensor | None,
    ordered: bool = False,
    max_elements: int | None = None,
) -> Tensor:
    """``gᵀKg`` per token [B] for ``g`` supported on ``indices`` [B, k] with ``values`` [B, k].

    ``g = zeros(B, F).scatter_add(-1, indices, values)``: repeated indices add up (TopK
    gives distinct ones). Costs ``8Bk²d`` FLOPs forward and backward together, no F².
    ``max_elements`` bounds the gathered ``[tokens, k, d]`` rows held at once.
    """
    if indices.shape != values.shape:
        raise ValueError(f"indices {tuple(indices.shape)} and values {tuple(values.shape)} must have the same shape")
    chunk = sparse_chunk(values.shape[0], values.shape[1], W_left.shape[1], max_elements, values.device.type)
    return _SparseQuadratic.apply(values, indices, W_left, W_right, b_left, b_right, ordered, chunk)
