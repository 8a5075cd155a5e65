"""Walk the manifold: move one token's activation along a latent's eigenvectors.

A bilinear latent is the quadratic form ``f_j = uᵀ Q_j u`` (plus a linear part when lifted),
``Q_j = (l rᵀ + r lᵀ)/2``, whose two non-zero eigenvalues ``(l·r ± |l||r|)/2`` have the
eigenvectors ``∝ l/|l| ± r/|r|``. The script moves the activation at ``--position`` of the prompt
to ``x + t·||x||·v`` for ``t`` in ``[−span, span]`` along each eigenvector ``v`` and records latent
j of the moved activation, the model's next-token distribution (KL from the clean one, top
tokens) and the logit lens of the moved activation itself (``unembed(ln_final(x_t))``).

Writes ``walk_manifold.json`` and ``walk_manifold.png`` into ``--out``.

    python hooks/walk_manifold.py --sae runs/<run>/sae --latent 7 --span 1.5
    python hooks/walk_manifold.py --model toy
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

DEFAULT_PROMPT = "On Monday the carts left at dawn, loaded with grain"


def build_parser() -> Any:
    parser = _common.base_parser(__doc__.split("\n")[0], "walk_manifold")
    parser.add_argument("--latent", type=int, default=None, help="latent to walk (default: the most active at --position)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="prompt (the toy model samples its own)")
    parser.add_argument("--position", type=int, default=-1, help="sequence position of the activation to move")
    parser.add_argument("--span", type=float, default=1.0, help="largest |t| (units of the token's norm)")
    parser.add_argument("--steps", type=int, default=21, help="number of steps from -span to span")
    parser.add_argument("--top-k", type=int, default=5, help="tokens to record per step")
    return parser


def _top(model: Any, logits: Any, k: int) -> list[list[Any]]:
    import torch

    from sae_bilinear.interventions import top_tokens

    log_probs = torch.log_softmax(logits.float(), -1)
    return [[_common.token_str(model, t), v] for t, v in top_tokens(log_probs, k)]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = build_parser().parse_args(argv)
    _common.setup(args)
    import torch

    from sae_bilinear import interventions as iv
    from sae_bilinear.evaluate import check_tokens

    if args.steps < 2 or args.span <= 0:
        raise SystemExit("--steps must be at least 2 and --span positive")
    start = time.time()
    model, sae, hook = _common.load_model_and_sae(args)
    if args.latent is not None:
        iv.check_latent(sae, args.latent)
    prompt = check_tokens(model, _common.prompt_tokens(model, args.prompt), min_length=1).to(model.cfg.device)
    length = prompt.shape[1]
    if not -length <= args.position < length:
        raise SystemExit(f"--position {args.position} is outside the prompt of {length} tokens")
    position = args.position % length
    if args.latent is None:
        latent = _common.most_active_latent(model, sae, prompt, hook, position=position)
    else:
        latent = iv.check_latent(sae, args.latent)
    ts = torch.linspace(-args.span, args.span, args.steps)
    walk = iv.walk_manifold(model, sae, prompt, latent, ts=ts, position=position, hook_name=hook)
    kl = walk.kl_from_clean()

    clean_log_probs = torch.log_softmax(walk.clean_logits, -1)
    tracked = sorted(
        {int(t) for t in clean_log_probs.topk(3).indices}
        | {int(walk.logits[k, i].argmax()) for k in range(len(walk.eigen)) for i in (0, -1)}
    )
    directions = []
    for k, eigen in enumerate(walk.eigen):
        log_probs = torch.log_softmax(walk.logits[k], -1)
        steps = []
        for i, t in enumerate(walk.ts.tolist()):
            step: dict[str, Any] = {
                "t": t,
                "latent": float(walk.latent_values[k, i]),
                "kl_from_clean": float(kl[k, i]),
                "top_next_tokens": _top(model, walk.logits[k, i], args.top_k),
            }
            if walk.lens_logits is not None:
                step["logit_lens"] = _top(model, walk.lens_logits[k, i], args.top_k)
            steps.append(step)
        directions.append(
            {
                "eigen": eigen,
                "eigenvalue": float(walk.eigenvalues[k]),
                "steps": steps,
                "tracked_log_probs": {
                    _common.token_str(model, t): [float(v) for v in log_probs[:, t]] for t in tracked
                },
            }
        )

    result = _common.describe_run(model, sae, hook, args) | {
        "latent": latent,
        "prompt": _common.tokens_str(model, prompt[0].tolist()),
        "position": position,
        "token_at_position": _common.token_str(model, int(prompt[0, position])),
        "move": "x + t·||x||·v, v a unit eigenvector of Q_j = (l rᵀ + r lᵀ)/2",
        "clean_next_tokens": _top(model, walk.clean_logits, args.top_k),
        "directions": directions,
        "seconds": round(time.time() - start, 2),
    }
    _common.write_json(args.out, "walk_manifold.json", result)

    fig, axes = _common.new_figure(1, 3, figsize=(14, 3.8))
    t = walk.ts.tolist()
    for k, direction in enumerate(directions):
        label = f"v{direction['eigen']} (λ={direction['eigenvalue']:.3g})"
        axes[0].plot(t, walk.latent_values[k].tolist(), marker=".", label=label)
        axes[1].plot(t, kl[k].tolist(), marker=".", label=label)
    axes[0].set_ylabel(f"latent {latent}")
    axes[1].set_ylabel("KL(clean ‖ moved), next token")
    for name, values in directions[0]["tracked_log_probs"].items():
        axes[2].plot(t, values, label=repr(name))
    axes[2].set_ylabel(f"next-token log-prob along v{directions[0]['eigen']}")
    for ax in axes:
        ax.set_xlabel("t (units of ||x||)")
        ax.legend(fontsize=7)
    fig.suptitle(f"{result['model']} · {hook}: walking latent {latent} at position {position}")
    _common.save_figure(fig, args.out, "walk_manifold.png")
    if not args.no_progress:
        print(f"wrote {args.out / 'walk_manifold.json'} and walk_manifold.png")
    return result


if __name__ == "__main__":
    main()
