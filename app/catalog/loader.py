"""Read products and shoppers from JSONL or CSV; a bad row names its file and line."""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from pydantic import ValidationError

from app.domain import Product, Shopper

log = logging.getLogger(__name__)
T = TypeVar("T", Product, Shopper)

# Columns of a CSV that hold lists, written as "a;b;c".
_LIST_COLUMNS = {"tags", "interests"}
# Columns an empty CSV cell leaves unset.
_OPTIONAL_COLUMNS = {"image_url", "added_at", "restocked_at"}
_BOOL_TRUE = {"true", "1", "yes", "y"}
_BOOL_FALSE = {"false", "0", "no", "n", ""}


class CatalogError(ValueError):
    """A catalog or shopper file that cannot be used, with the place of the fault."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


def _rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, raw row) from a .jsonl or .csv file."""
    if not path.exists():
        raise CatalogError(path, None, "file not found")
    suffix = path.suffix.lower()
    with path.open(encoding="utf-8", newline="") as handle:
        if suffix in {".jsonl", ".ndjson"}:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as error:
                    raise CatalogError(path, number, f"invalid JSON: {error.msg}") from None
                if not isinstance(row, dict):
                    raise CatalogError(path, number, "each line must be a JSON object")
                yield number, row
        elif suffix == ".csv":
            reader = csv.DictReader(handle)
            for record in reader:
                # The header is line 1; DictReader's line_num is the last physical line read.
                if None in record:
                    raise CatalogError(path, reader.line_num, "more fields than the header has")
                yield reader.line_num, _from_csv(record)
        else:
            raise CatalogError(path, None, "unsupported format (use .jsonl or .csv)")


def _from_csv(record: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for key, value in record.items():
        if value is None:
            continue
        if key in _LIST_COLUMNS:
            row[key] = [part.strip() for part in value.split(";") if part.strip()]
        elif key == "in_stock":
            lowered = value.strip().lower()
            row[key] = lowered in _BOOL_TRUE if lowered in _BOOL_TRUE | _BOOL_FALSE else value
        elif key in _OPTIONAL_COLUMNS and not value.strip():
            row[key] = None
        elif key == "history":
            row[key] = json.loads(value) if value.strip() else []
        else:
            row[key] = value
    return row


def _describe(error: ValidationError) -> str:
    first = error.errors()[0]
    field = ".".join(str(part) for part in first["loc"]) or "row"
    more = f" (+{error.error_count() - 1} more)" if error.error_count() > 1 else ""
    return f"field '{field}': {first['msg']}{more}"


def _load(path: Path, model: type[T]) -> list[T]:
    items: list[T] = []
    seen: dict[str, int] = {}
    for number, row in _rows(path):
        try:
            item = model.model_validate(row)
        except ValidationError as error:
            raise CatalogError(path, number, _describe(error)) from None
        except json.JSONDecodeError as error:
            raise CatalogError(
                path, number, f"field 'history': invalid JSON: {error.msg}"
            ) from None
        item_id = str(getattr(item, "id"))  # noqa: B009 - both models have an id
        if item_id in seen:
            raise CatalogError(
                path, number, f"duplicate id '{item_id}' (first on line {seen[item_id]})"
            )
        seen[item_id] = number
        items.append(item)
    return items


def load_products(path: Path) -> list[Product]:
    products = _load(path, Product)
    if not products:
        raise CatalogError(path, None, "no products")
    return products


def load_shoppers(path: Path, known_products: set[str] | None = None) -> list[Shopper]:
    """Load shoppers; events about products not in the catalog are dropped with a warning."""
    shoppers = _load(path, Shopper)
    if known_products is None:
        return shoppers
    cleaned: list[Shopper] = []
    dropped = 0
    for shopper in shoppers:
        kept = tuple(e for e in shopper.history if e.product_id in known_products)
        dropped += len(shopper.history) - len(kept)
        changed = len(kept) != len(shopper.history)
        cleaned.append(shopper.model_copy(update={"history": kept}) if changed else shopper)
    if dropped:
        log.warning("%s: dropped %d events about products not in the catalog", path, dropped)
    return cleaned
