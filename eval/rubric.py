"""How far the publishability rubric (app/rubric.py) can be trusted: its findings on copy
labelled by hand (``tests/data/rubric_cases.yaml``: 160 banners, each with the findings a
careful marketer would make, an empty list for copy they would publish), as precision and
recall per finding. A training loop that uses the rubric as a reward or a gate reads these.

``python -m eval.rubric`` prints them, and the restated threshold's sweep it was chosen on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from app import rubric
from app.config import PROJECT_ROOT
from app.rubric import FINDINGS, review

LABELLED = PROJECT_ROOT / "tests" / "data" / "rubric_cases.yaml"


@dataclass(frozen=True)
class LabelledProduct:
    title: str
    category: str
    description: str = ""


@dataclass(frozen=True)
class LabelledCase:
    id: str
    theme: str | None
    products: tuple[LabelledProduct, ...]
    headline: str
    subheadline: str
    cta: str
    expect: frozenset[str]

    def found(self) -> set[str]:
        findings = review(
            self.headline, self.subheadline, self.cta, self.products, theme=self.theme
        )
        return {f.name for f in findings}


def load(path: Path = LABELLED) -> list[LabelledCase]:
    cases = []
    for row in yaml.safe_load(path.read_text(encoding="utf-8")):
        products = tuple(
            LabelledProduct(p["title"], p["category"], p.get("description", ""))
            for p in row["products"]
        )
        cases.append(
            LabelledCase(
                id=row["id"],
                theme=row.get("theme"),
                products=products,
                headline=row["headline"],
                subheadline=row["subheadline"],
                cta=row["cta"],
                expect=frozenset(row["expect"]),
            )
        )
    return cases


def scores(cases: list[LabelledCase]) -> dict[str, Any]:
    """Precision and recall of each finding on the labelled cases, and the cases it got
    wrong (their ids) for a person to read."""
    found = [case.found() for case in cases]
    per_finding: dict[str, dict[str, Any]] = {}
    for name in FINDINGS:
        hits = sum(
            name in got and name in case.expect for got, case in zip(found, cases, strict=True)
        )
        said = sum(name in got for got in found)
        labelled = sum(name in case.expect for case in cases)
        per_finding[name] = {
            "precision": hits / said if said else 1.0,
            "recall": hits / labelled if labelled else 1.0,
            "labelled": labelled,
            "false_positives": [
                c.id for g, c in zip(found, cases, strict=True) if name in g - c.expect
            ],
            "false_negatives": [
                c.id for g, c in zip(found, cases, strict=True) if name in c.expect - g
            ],
        }
    publishable = [not got for got in found]
    labelled_good = [not case.expect for case in cases]
    agree = sum(a == b for a, b in zip(publishable, labelled_good, strict=True))
    return {"cases": len(cases), "agreement": agree / len(cases), "findings": per_finding}


def restated_sweep(cases: list[LabelledCase], shares: tuple[float, ...]) -> list[dict[str, float]]:
    """Precision and recall of ``restated`` at each share of repeated words."""
    rows = []
    chosen = rubric.RESTATED_SHARE
    try:
        for share in shares:
            rubric.RESTATED_SHARE = share
            result = scores(cases)["findings"]["restated"]
            rows.append(
                {"share": share, "precision": result["precision"], "recall": result["recall"]}
            )
    finally:
        rubric.RESTATED_SHARE = chosen
    return rows


def main() -> None:
    cases = load(Path(sys.argv[1]) if len(sys.argv) > 1 else LABELLED)
    result = scores(cases)
    print(
        f"{result['cases']} labelled banners; the publishable verdict agrees on "
        f"{result['agreement']:.1%}"
    )
    for name, row in result["findings"].items():
        wrong = ", ".join(row["false_positives"] + row["false_negatives"]) or "none"
        print(
            f"  {name:15} precision {row['precision']:.2f}  recall {row['recall']:.2f}  "
            f"({row['labelled']} labelled; wrong: {wrong})"
        )
    print("restated, by the share of the subheadline's words that are the headline's:")
    for row in restated_sweep(cases, (0.4, 0.5, 0.6, 0.7, 0.8, 1.0)):
        print(f"  {row['share']:.1f}: precision {row['precision']:.2f} recall {row['recall']:.2f}")


if __name__ == "__main__":
    main()
