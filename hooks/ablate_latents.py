"""Per-latent ablation: what each latent does to the language model's loss, and to which tokens.

For each chosen latent j, the SAE is spliced in with its error term kept and latent j zeroed (or
set to its mean), so the only change to the forward pass is latent j's contribution to x̂. The
script reports the change in next-token CE loss over held-out text, and the tokens the latent's
decoder direction promotes and suppresses through the unembedding (``direction_j @ W_U``, the
final norm ignored; for a bilinear latent the sign of ``f_j`` decides which list applies: the
"promoted" tokens are pushed up when ``f_j > 0``).

Writes ``ablate_latents.json`` and ``ablate_latents.png`` (ΔCE per latent) into ``--out``.

    python hooks/ablate_latents.py --sae runs/<run>/sae --n-latents 16
    python hooks/ablate_latents.py --model toy            # seconds, toy model and toy SAE
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402


def build_parser() -> Any:
    parser = _common.base_parser(__doc__.split("\n")[0], "ablate_latents")
    parser.add_argument("--latents", type=_common.parse_int_list, default=None, help="comma-separated latent indices")
    parser.add_argument(
        "--n-latents", type=int, default=16, help="without --latents: ablate the latents with the largest mean |contribution|"
    )
    parser.add_argument("--mode", choices=("zero", "mean"), default="zero", help="ablate to zero or to the latent's mean")
    parser.add_argument("--n-seqs", type=int, default=8, help="held-out sequences")
    parser.add_argument("--context", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--top-k", type=int, default=10, help="promoted/suppressed tokens to list")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    _common.setup(args)
    import torch
    from tqdm.auto import tqdm

    from sae_bilinear import interventions as iv
    from sae_bilinear.evaluate import check_can_splice, check_tokens, is_bilinear

    start = time.time()
    model, sae, hook = _common.load_model_and_sae(args)
    check_can_splice(sae)
    latents = None if args.latents is None else iv.check_latents(sae, args.latents)
    tokens = check_tokens(model, _common.eval_tokens(model, args, args.n_seqs, args.context))
    batches = list(torch.split(tokens.to(model.cfg.device), args.batch_size))

    with torch.no_grad():
        # Clean loss and per-latent statistics of the clean activations.
        clean_total, count = 0.0, 0
        f_abs = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
        contribution = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
        f_sum = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
        active = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
        n_positions = 0
        for batch in batches:
            loss, cache = model.run_with_cache(batch, names_filter=hook, return_type="loss", loss_per_token=True)
            clean_total += float(loss.double().sum())
            count += loss.numel()
            x = cache[hook].to(sae.device).reshape(-1, sae.cfg.d_in)
            f = sae.encode(x)
            scale = x.norm(dim=-1, keepdim=True) if is_bilinear(sae) else torch.ones_like(x[:, :1])
            f_abs += f.abs().double().sum(0).cpu()
            f_sum += f.double().sum(0).cpu()
            contribution += (f.abs() * scale).double().sum(0).cpu()
            fires = sae.active_latents(f) if is_bilinear(sae) else f != 0
            active += fires.double().sum(0).cpu()
            n_positions += x.shape[0]
        ce_clean = clean_total / count
        means = (f_sum / n_positions).to(torch.float32)
        norms = iv.latent_directions(sae).norm(dim=-1).double().cpu()
        score = contribution / n_positions * norms
        if latents is None:
            latents = score.argsort(descending=True)[: min(args.n_latents, sae.cfg.d_sae)].tolist()

        rows = []
        for j in tqdm(latents, desc="ablating latents", disable=args.no_progress):
            fn = iv.ablate_hook(sae, [j], mode=args.mode, means=means.to(sae.device), keep_error=True, hook_name=hook)
            total = 0.0
            with iv.interventions(model, [(hook, fn)]):
                for batch in batches:
                    total += float(model(batch, return_type="loss", loss_per_token=True).double().sum())
            ce = total / count
            effect = iv.unembedding_effect(model, sae, j)
            row: dict[str, Any] = {
                "latent": int(j),
                "ce_ablated": ce,
                "delta_ce": ce - ce_clean,
                "mean_activation": float(f_sum[j] / n_positions),
                "mean_abs_activation": float(f_abs[j] / n_positions),
                "mean_abs_contribution": float(score[j]),
                "active_fraction": float(active[j] / n_positions),
            }
            if effect is not None:
                row["promoted"] = [[_common.token_str(model, t), v] for t, v in iv.top_tokens(effect, args.top_k)]
                row["suppressed"] = [
                    [_common.token_str(model, t), v] for t, v in iv.top_tokens(effect, args.top_k, largest=False)
                ]
            rows.append(row)

    result = _common.describe_run(model, sae, hook, args) | {
        "mode": args.mode,
        "n_tokens": int(tokens.numel()),
        "ce_clean": ce_clean,
        "latents": rows,
        "seconds": round(time.time() - start, 2),
    }
    _common.write_json(args.out, "ablate_latents.json", result)

    fig, ax = _common.new_figure(figsize=(max(4.0, 0.45 * len(rows) + 1.5), 3.5))
    ax.bar([str(r["latent"]) for r in rows], [r["delta_ce"] for r in rows], color="tab:red")
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel("latent")
    ax.set_ylabel(f"ΔCE ({args.mode}-ablated − clean), nats")
    ax.set_title(f"{result['model']} · {hook}: per-latent ablation")
    _common.save_figure(fig, args.out, "ablate_latents.png")
    if not args.no_progress:
        print(f"wrote {args.out / 'ablate_latents.json'} and ablate_latents.png")
    return result


if __name__ == "__main__":
    main()
