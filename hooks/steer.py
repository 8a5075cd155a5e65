"""Steering: generate text while pushing the activations along one latent's decoder direction.

At every position of the prompt and of the generated text (the first position is left alone
when it is BOS, whose norm is atypical), the activation at the SAE's hook point becomes
``x + s · ||x|| · d̂_j``: ``d̂_j`` is the unit direction of latent j's contribution to x̂ and
``s`` a fraction of the token's norm (``--raw``: ``x + s · ||x|| · d_j``, exactly what raising
the bilinear latent by ``s`` adds to x̂). For each strength the script records the greedy
generation, the next-token distribution after the prompt, and latent j re-encoded from the
steered activation.

Writes ``steer.json`` and ``steer.png`` (next-token probabilities and the latent vs strength).

    python hooks/steer.py --sae runs/<run>/sae --latent 42 --strengths 0,0.5,1,2
    python hooks/steer.py --model toy
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

DEFAULT_PROMPT = "The weather in the mountains today is"


def build_parser() -> Any:
    parser = _common.base_parser(__doc__.split("\n")[0], "steer")
    parser.add_argument("--latent", type=int, default=None, help="latent to steer along (default: the most active on the prompt)")
    parser.add_argument("--strengths", type=_common.parse_float_list, default=[0.0, 0.5, 1.0, 2.0], help="comma-separated strengths")
    parser.add_argument("--raw", action="store_true", help="strength in latent units (x + s·||x||·d_j) instead of fractions of ||x||")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt (the toy model samples its own)")
    parser.add_argument("--max-new-tokens", type=int, default=20, help="tokens to generate per strength")
    parser.add_argument("--steer-bos", action="store_true", help="also steer the first position when it is BOS")
    parser.add_argument("--top-k", type=int, default=5, help="next tokens to record per strength")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    _common.setup(args)
    import torch

    from sae_bilinear import interventions as iv
    from sae_bilinear.evaluate import check_can_splice, check_tokens

    start = time.time()
    model, sae, hook = _common.load_model_and_sae(args)
    check_can_splice(sae)  # steering needs the decoder directions (lifted bilinear SAEs)
    if args.latent is not None:
        iv.check_latent(sae, args.latent)
    prompt = check_tokens(model, _common.prompt_tokens(model, args.prompt), min_length=1).to(model.cfg.device)
    latent = _common.most_active_latent(model, sae, prompt, hook) if args.latent is None else args.latent
    max_new = max(0, min(args.max_new_tokens, model.cfg.n_ctx - prompt.shape[1]))
    tokenizer = getattr(model, "tokenizer", None)
    skip_first = not args.steer_bos and tokenizer is not None and tokenizer.bos_token_id is not None and int(prompt[0, 0]) == tokenizer.bos_token_id
    positions = slice(1, None) if skip_first else None

    rows = []
    for strength in args.strengths:
        steer = iv.steer_hook(sae, latent, strength, unit=not args.raw, hook_name=hook, positions=positions)
        seen: list[Any] = []

        def record(activation: Any, hook: Any) -> Any:  # noqa: ARG001  (runs after the steering hook)
            seen.append(activation[0, -1].detach())
            return activation

        with torch.no_grad(), iv.interventions(model, [(hook, steer), (hook, record)]):
            logits = model(prompt)[0, -1]
            latent_after = float(sae.encode(seen[0].unsqueeze(0).to(sae.device))[0, latent])
            generated = prompt
            if max_new:
                generated = model.generate(
                    prompt,
                    max_new_tokens=max_new,
                    do_sample=False,
                    use_past_kv_cache=False,  # full passes keep `positions` aligned with the sequence
                    stop_at_eos=tokenizer is not None,
                    verbose=False,
                    return_type="tokens",
                )
        log_probs = torch.log_softmax(logits.float(), -1)
        new_tokens = generated[0, prompt.shape[1] :].tolist()
        rows.append(
            {
                "strength": strength,
                "text": _common.tokens_str(model, new_tokens),
                "tokens": new_tokens,
                "latent_after_steering": latent_after,
                "next_tokens": [
                    [_common.token_str(model, t), v] for t, v in iv.top_tokens(log_probs, args.top_k)
                ],
                "_log_probs": log_probs,
            }
        )

    # Tokens to follow across strengths: the union of every strength's top 3.
    tracked = sorted({int(t) for row in rows for t in row["_log_probs"].topk(3).indices})
    for row in rows:
        row["tracked_log_probs"] = {_common.token_str(model, t): float(row["_log_probs"][t]) for t in tracked}
        del row["_log_probs"]

    result = _common.describe_run(model, sae, hook, args) | {
        "latent": latent,
        "prompt": _common.tokens_str(model, prompt[0].tolist()),
        "units": "latent (x + s·||x||·d_j)" if args.raw else "fraction of ||x|| along the unit direction",
        "steered_positions": "all but the first (BOS)" if skip_first else "all",
        "generations": rows,
        "seconds": round(time.time() - start, 2),
    }
    _common.write_json(args.out, "steer.json", result)

    fig, (ax_tokens, ax_latent) = _common.new_figure(1, 2, figsize=(10, 3.8))
    strengths = [row["strength"] for row in rows]
    for name in rows[0]["tracked_log_probs"]:
        ax_tokens.plot(strengths, [row["tracked_log_probs"][name] for row in rows], marker="o", label=repr(name))
    ax_tokens.set_xlabel("steering strength")
    ax_tokens.set_ylabel("next-token log-probability")
    ax_tokens.legend(fontsize=7, ncol=2)
    ax_latent.plot(strengths, [row["latent_after_steering"] for row in rows], marker="o", color="tab:purple")
    ax_latent.set_xlabel("steering strength")
    ax_latent.set_ylabel(f"latent {latent}, re-encoded (last token)")
    fig.suptitle(f"{result['model']} · {hook}: steering along latent {latent}")
    _common.save_figure(fig, args.out, "steer.png")
    if not args.no_progress:
        for row in rows:
            print(f"strength {row['strength']:+.2f}: {row['text']!r}")
        print(f"wrote {args.out / 'steer.json'} and steer.png")
    return result


if __name__ == "__main__":
    main()
