"""The HTML report: one self-contained file (plots inlined as PNG), readable without a server."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # no display here, and none needed
import matplotlib.pyplot as plt
from jinja2 import Environment, FileSystemLoader

from app.rubric import FINDINGS
from eval.retrieval import KS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from eval.runner import Outcome

COPY_RATES = ("schema_valid", "grounded", "length_ok", "fallback", "degenerate")


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def retrieval_curves(name: str, rows: dict[str, dict[str, Any]]) -> str:
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for recommender, row in rows.items():
        style = "-" if recommender.startswith("marquee") else "--"
        left.plot(KS, [row[f"recall@{k}"] for k in KS], style, marker="o", label=recommender)
    left.set(title=f"{name}: recall@k", xlabel="k", ylabel="recall", xticks=list(KS))
    left.legend(fontsize=7)
    names = list(rows)
    values = [rows[n]["ndcg@10"] for n in names]
    low = [v - rows[n]["ndcg@10_ci"][0] for n, v in zip(names, values, strict=True)]
    high = [rows[n]["ndcg@10_ci"][1] - v for n, v in zip(names, values, strict=True)]
    right.barh(names, values, xerr=[low, high], color="#4c6ef5", ecolor="#222", capsize=3)
    right.invert_yaxis()
    right.set(title=f"{name}: NDCG@10 (95% bootstrap CI)", xlabel="NDCG@10")
    right.tick_params(axis="y", labelsize=7)
    return _png(figure)


def copy_bars(copy: dict[str, Any]) -> str:
    figure, (left, middle, right) = plt.subplots(
        1, 3, figsize=(15, 3.4), gridspec_kw={"width_ratios": [3, 2, 1]}
    )
    shares = [name for name in ("publishable", *FINDINGS) if name in copy]
    if shares:
        means = [copy[name]["mean"] for name in shares]
        middle.bar(
            shares,
            means,
            yerr=[
                [m - copy[n]["ci"][0] for n, m in zip(shares, means, strict=True)],
                [copy[n]["ci"][1] - m for n, m in zip(shares, means, strict=True)],
            ],
            color=["#1c7ed6"] + ["#e8590c"] * (len(shares) - 1),
            ecolor="#222",
            capsize=3,
        )
        middle.set(title="publishable, and each finding's share (95% CI)", ylim=(0, 1.05))
        middle.tick_params(axis="x", labelsize=8, rotation=30)
    values = [copy[m]["mean"] for m in COPY_RATES]
    errors = [
        [v - copy[m]["ci"][0] for m, v in zip(COPY_RATES, values, strict=True)],
        [copy[m]["ci"][1] - v for m, v in zip(COPY_RATES, values, strict=True)],
    ]
    left.bar(COPY_RATES, values, yerr=errors, color="#37b24d", ecolor="#222", capsize=3)
    left.set(title=f"copy rates over {copy['banners']} banners (95% CI)", ylim=(0, 1.05))
    left.tick_params(axis="x", labelsize=8)
    lift = copy["personalization_lift"]
    right.bar(
        ["personalization lift"],
        [lift["mean"]],
        yerr=[[lift["mean"] - lift["ci"][0]], [lift["ci"][1] - lift["mean"]]],
        color="#f59f00",
        ecolor="#222",
        capsize=3,
    )
    right.axhline(0, color="#888", linewidth=0.8)
    right.set(title="own interests minus others' (cosine)")
    return _png(figure)


def latency_histogram(latencies: dict[str, list[float]]) -> str:
    figure, axis = plt.subplots(figsize=(7, 3.2))
    for arm, values in latencies.items():
        axis.hist([v / 1000 for v in values], bins=15, alpha=0.6, label=arm)
    axis.set(title="banner latency", xlabel="seconds", ylabel="banners")
    axis.legend(fontsize=8)
    return _png(figure)


def comparison_plot(compare: dict[str, Any]) -> str:
    names = list(compare["differences"])
    diffs = [compare["differences"][n]["b_minus_a"] for n in names]
    low = [d - compare["differences"][n]["ci"][0] for n, d in zip(names, diffs, strict=True)]
    high = [compare["differences"][n]["ci"][1] - d for n, d in zip(names, diffs, strict=True)]
    figure, axis = plt.subplots(figsize=(8, 3.6))
    # Latency is in milliseconds: scale it to seconds so the other bars stay readable.
    scale = [0.001 if n == "latency_ms" else 1.0 for n in names]
    axis.barh(
        [n.replace("latency_ms", "latency (s)") for n in names],
        [d * s for d, s in zip(diffs, scale, strict=True)],
        xerr=[
            [v * s for v, s in zip(low, scale, strict=True)],
            [v * s for v, s in zip(high, scale, strict=True)],
        ],
        color="#7048e8",
        ecolor="#222",
        capsize=3,
    )
    axis.axvline(0, color="#888", linewidth=0.8)
    axis.invert_yaxis()
    axis.set(title=f"B − A: {compare['b']} vs {compare['a']} (95% paired bootstrap CI)")
    return _png(figure)


PAGE = Environment(loader=FileSystemLoader(Path(__file__).parent), autoescape=True).get_template(
    "report.html.j2"
)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return "—" if value is None else str(value)


def html_report(outcome: Outcome) -> str:
    summary = outcome.summary
    plots: dict[str, str] = {}
    for kind in ("retrieval", "search"):
        for name, rows in summary[kind].items():
            plots[kind + name] = retrieval_curves(name, rows)
    copies = dict(summary["copy"])
    if "compare" in summary:
        copies.update(summary["compare"]["arms"])
        plots["compare"] = comparison_plot(summary["compare"])
    for arm, copy in copies.items():
        plots["copy" + arm] = copy_bars(copy)
    latencies = {arm: copy.get("latencies_ms", []) for arm, copy in copies.items()}
    if any(latencies.values()):
        plots["latency"] = latency_histogram(latencies)
    return PAGE.render(
        s=summary,
        checks=outcome.checks,
        passed=outcome.passed,
        worst=outcome.worst,
        copies=copies,
        plots=plots,
        ks=KS,
        fmt=_fmt,
        findings=FINDINGS,
    )
