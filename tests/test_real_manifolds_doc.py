"""docs/real_manifolds.md's tables agree with the results files the experiment wrote."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "real_manifolds.md"
RESULTS = ROOT / "experiments" / "results" / "real_manifolds"


def doc_tables() -> list[tuple[str, list[list[str]]]]:
    """Each ``| dictionary | week | year ...`` table with the results folder named in the text before it."""
    text = DOC.read_text()
    tables = []
    for match in re.finditer(r"\| dictionary \| week \| year[^\n]*\n\|[-|]+\|\n((?:\|[^\n]*\n)+)", text):
        before = text[: match.start()]
        folder = re.findall(r"--out experiments/results/real_manifolds/(\w+)", before[-600:])
        lines = match.group(1).splitlines()
        rows = [[c.strip().strip("*") for c in line.strip().strip("|").split("|")] for line in lines]
        tables.append((folder[-1] if folder else "", rows))
    return tables


def result_name(doc_name: str) -> str:
    if doc_name.startswith("random signed"):
        return "random signed (1152)"
    if doc_name.startswith("SAELens TopK"):
        return doc_name
    return re.sub(r"^bilinear (\w+) (\w+) α ([\d.]+)$", r"\1 \2 \3", doc_name)


def test_the_doc_has_the_three_tables():
    assert [folder for folder, _ in doc_tables()] == ["", "long", "share30"]


@pytest.mark.parametrize("folder,rows", doc_tables())
def test_doc_numbers_match_the_results(folder, rows):
    results = json.loads((RESULTS / folder / "results.json").read_text())
    table = {r["name"]: r for r in results["table"]}
    fit = {d["name"]: d for d in results["dictionaries"]}
    for row in rows:
        name = result_name(row[0])
        assert name in table, f"{row[0]!r} ({name!r}) is not in {folder or '.'}/results.json"
        assert float(row[1]) == pytest.approx(table[name]["week_pair_angle_r2"], abs=6e-4), row
        assert float(row[2]) == pytest.approx(table[name]["year_pair_angle_r2"], abs=6e-4), row
        if len(row) > 3 and row[3] != "–":
            metrics = fit[name]["fit"]
            assert float(row[3]) == pytest.approx(metrics["reconstruction_error"], abs=6e-4), row
            assert float(row[4]) == pytest.approx(metrics["hoyer_density"], abs=6e-4), row
