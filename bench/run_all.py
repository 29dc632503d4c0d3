"""Run every benchmark; each writes bench/results/<name>.md and .json."""

from __future__ import annotations

from bench import banner, dtypes, embedding, retrieval, service


def main() -> None:
    for module in (dtypes, embedding, retrieval, banner, service):
        print(f"\n=== {module.__name__} ===", flush=True)
        module.main()


if __name__ == "__main__":
    main()
