"""Run every benchmark; each writes bench/results/<name>.md and .json."""

from __future__ import annotations

from bench import banner, embedding, retrieval


def main() -> None:
    for module in (embedding, retrieval, banner):
        print(f"\n=== {module.__name__} ===", flush=True)
        module.main()


if __name__ == "__main__":
    main()
