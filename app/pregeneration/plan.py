"""What a pre-generation job makes: the subjects of a selection, in an order that shares
prompts, and the shopper each one is generated for."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from app.catalog.store import ShopperStore, shopper_version
from app.domain import Audience, Shopper, Subject, to_identifier
from app.pregeneration.freshness import Current
from app.prompting.templates import TemplateRegistry

POPULAR = Subject(audience=Audience.POPULAR)
MAX_IDS_FILE_BYTES = 64 * 1024 * 1024


class SelectionError(ValueError):
    """A job that names nothing, or names what does not exist. ``field``: what it got wrong
    (``placement``, ``shoppers`` or ``shopper_ids``, as a job's request names them)."""

    def __init__(self, message: str, field: str = "shoppers") -> None:
        super().__init__(message)
        self.field = field


def check(
    templates: TemplateRegistry,
    shoppers: ShopperStore,
    placement: str,
    selection: str,
    ids: Iterable[str] | None = None,
) -> None:
    """Refuse a job for an unknown placement, or for a selection of no known shopper, before
    it exists (the command and the API both ask)."""
    try:
        templates.default_for(placement)
    except KeyError as unknown:
        raise SelectionError(unknown.args[0], "placement") from None
    subjects(shoppers, selection, ids)


def read_ids(path: Path) -> tuple[str, ...]:
    """Shopper ids, one per line (blank lines and ``#`` comments skipped), first seen kept."""
    if path.stat().st_size > MAX_IDS_FILE_BYTES:
        raise SelectionError(f"{path}: larger than {MAX_IDS_FILE_BYTES // 2**20} MiB")
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return tuple(dict.fromkeys(line for line in lines if line and not line.startswith("#")))


def subjects(
    shoppers: ShopperStore, selection: str, ids: Iterable[str] | None = None
) -> list[Subject]:
    """The subjects of a selection: its shoppers, the segments they belong to, and everyone
    else (``popular``), which any selection refreshes (a read falls back on it).

    ``selection``: ``all``, ``segment:<name>`` or ``ids`` (with ``ids``). Unknown shopper ids
    and a selection of no shoppers are refused: a job that cannot make what was asked for is a
    mistake to report, not a job that does nothing.
    """
    if selection == "all":
        chosen = shoppers.all()
    elif selection.startswith("segment:"):
        segment = selection.removeprefix("segment:")
        chosen = [s for s in shoppers.all() if s.segment == segment]
        if not chosen:
            known = sorted({s.segment for s in shoppers.all()})
            raise SelectionError(
                f"no shopper in segment '{segment}' (segments: {', '.join(known)})"
            )
    elif selection == "ids":
        wanted = list(dict.fromkeys(ids or ()))
        unknown = [i for i in wanted if not shoppers.known(i)]
        if unknown:
            shown = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise SelectionError(f"{len(unknown)} unknown shopper id(s): {shown}", "shopper_ids")
        chosen = [shoppers.get(i) for i in wanted]
    else:
        raise SelectionError(f"unknown selection '{selection}' (all, segment:<name> or ids)")
    if not chosen:
        field = "shopper_ids" if selection == "ids" else "shoppers"
        raise SelectionError("the selection names no shopper", field)
    segments = sorted({s.segment for s in chosen})
    return [
        *(Subject(audience=Audience.SHOPPER, key=s.id) for s in chosen),
        *(Subject(audience=Audience.SEGMENT, key=name) for name in segments),
        POPULAR,
    ]


def shopper_for(subject: Subject, shoppers: ShopperStore) -> Shopper:
    """Who a subject's banner is written for. A segment's stand-in has the segment and no
    history (what any of its shoppers shares); ``popular`` is a cold start."""
    if subject.audience is Audience.SHOPPER:
        return shoppers.get(subject.key)
    if subject.audience is Audience.SEGMENT:
        return Shopper(id=to_identifier(subject.shopper_id), segment=subject.key)
    return Shopper(id=subject.shopper_id)


def current(
    subject: Subject,
    shoppers: ShopperStore,
    templates: TemplateRegistry,
    template_name: str,
    model: str,
) -> Current:
    """What the subject's banner would be made from now."""
    shopper = shopper_for(subject, shoppers)
    template, label = templates.choose(template_name, shopper.id, locale=shopper.locale)
    return Current(
        shopper_version=shopper_version(shopper),
        template_version=template.version,
        template_label=label,
        model=model,
        brand_version=templates.brand_version,
    )


def in_prompt_order(
    planned: list[Subject], shoppers: ShopperStore, templates: TemplateRegistry, name: str
) -> list[Subject]:
    """Subjects grouped by the template version they get (an experiment splits a placement
    in two; a locale variant is another text): requests sent together then share their
    prompt's prefix in vLLM's cache."""

    def version(subject: Subject) -> tuple[str, str, int]:
        shopper = shopper_for(subject, shoppers)
        template, label = templates.choose(name, shopper.id, locale=shopper.locale)
        return template.name, label, template.version

    return sorted(planned, key=version)  # stable: the selection's order within a group
