"""Run every benchmark; each writes bench/results/<name>.md and .json. The long runs (the load
test bench/load.py, the read path bench/reads.py, a big job bench/pregeneration_scale.py) run
on their own."""

from __future__ import annotations

from bench import banner, collaborative, dtypes, embedding, pregeneration, retrieval, service


def main() -> None:
    for module in (dtypes, embedding, retrieval, collaborative, banner, service, pregeneration):
        print(f"\n=== {module.__name__} ===", flush=True)
        module.main()


if __name__ == "__main__":
    main()
