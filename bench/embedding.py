"""Catalog embedding throughput (products/s): bf16 against fp32, side by side in one run."""

from __future__ import annotations

import time

import numpy as np

from app.config import get_settings
from app.retrieval.embedder import SentenceEmbedder, product_text
from app.runtime import load_data
from bench.common import write_results


def main() -> None:
    settings = get_settings()
    catalog, _ = load_data(settings, with_changes=False)
    texts = [product_text(p) for p in catalog.products]
    rows: list[list[object]] = []
    vectors: dict[str, np.ndarray] = {}
    for dtype in ("float32", "bfloat16"):
        embedder = SentenceEmbedder(settings.embedding_model, settings.embedding_batch_size, dtype)
        embedder.encode(texts[:64])  # warm-up
        start = time.perf_counter()
        vectors[dtype] = embedder.encode(texts)
        elapsed = time.perf_counter() - start
        rows.append([dtype, len(texts), elapsed, len(texts) / elapsed])
    speedup = rows[1][3] / rows[0][3]  # type: ignore[operator]
    # Does bf16 find the same neighbours? top-10 overlap with fp32 over every product.
    full, half = vectors["float32"], vectors["bfloat16"]
    top_full = np.argsort(-(full @ full.T), axis=1)[:, 1:11]
    top_half = np.argsort(-(half @ half.T), axis=1)[:, 1:11]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_full, top_half, strict=True)])
    for row in rows:
        row.append(row[3] / rows[0][3])  # type: ignore[operator]
    write_results(
        "embedding",
        "Catalog embedding throughput",
        ["dtype", "products", "seconds", "products/s", "vs fp32"],
        rows,
        [
            f"bf16 is {speedup:.2f}x fp32; top-10 neighbour recall of bf16 vs fp32: {recall:.3f}",
            f"model: {settings.embedding_model}, batch size {settings.embedding_batch_size}",
        ],
    )


if __name__ == "__main__":
    main()
