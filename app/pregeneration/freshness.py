"""When a stored banner must be made again: the inputs it was made from against today's.

One place decides, for the read path (is it safe to serve?) and for the planner of a
``--stale-only`` job (does it need work?).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from app.catalog.store import Catalog
from app.domain import Banner, BannerInputs


def inputs_of(banner: Banner, shopper_version: str, catalog: Catalog) -> BannerInputs:
    """What ``banner`` was made from, with its products' facts as the catalog has them now."""
    facts: dict[str, tuple[float, bool]] = {}
    for shown in banner.products:
        product = catalog.get(shown.id)
        in_stock = product is not None and product.in_stock and catalog.on_sale(shown.id)
        facts[shown.id] = (shown.price, in_stock)
    return BannerInputs(
        shopper_version=shopper_version,
        template_version=banner.template_version,
        template_label=banner.template_label,
        model=banner.model,
        brand_version=banner.brand_version,
        facts=facts,
        anchor=banner.anchor.id if banner.anchor else None,
        campaigns={c.id: c.ends_at for c in banner.campaigns},
    )


def product_problems(
    facts: dict[str, tuple[float, bool]], catalog: Catalog, anchor: str | None = None
) -> list[str]:
    """The shown products that may no longer be shown as they were: withdrawn, out of stock,
    or at another price; and a named ``anchor`` that was withdrawn. Cheap (dictionary
    lookups): the read path asks on every read."""
    problems = []
    if anchor is not None and not catalog.on_sale(anchor):
        problems.append(f"product {anchor} withdrawn (named as viewed)")
    for product_id, (price, _) in facts.items():
        product = catalog.get(product_id)
        if product is None or not catalog.on_sale(product_id):
            problems.append(f"product {product_id} withdrawn")
        elif not product.in_stock:
            problems.append(f"product {product_id} out of stock")
        elif abs(product.price - price) > 0.005:
            problems.append(f"product {product_id} price {price:g} -> {product.price:g}")
    return problems


@dataclass(frozen=True)
class Current:
    """What a subject's banner would be made from now."""

    shopper_version: str
    template_version: int
    template_label: str
    model: str
    brand_version: int | None = None


def stale_reasons(
    inputs: BannerInputs,
    generated_at: datetime,
    current: Current,
    catalog: Catalog,
    now: datetime,
    max_age_s: float,
) -> list[str]:
    """Why a stored banner is stale; empty when it is fresh."""
    reasons = []
    if inputs.shopper_version != current.shopper_version:
        reasons.append("profile or history changed")
    if (inputs.template_label, inputs.template_version) != (
        current.template_label,
        current.template_version,
    ):
        reasons.append(
            f"template {inputs.template_label} v{inputs.template_version} -> "
            f"{current.template_label} v{current.template_version}"
        )
    # Rules from the prompts folder have no version; a banner made under them is judged by
    # the rest (a first start with the store must not make every stored banner stale).
    if None not in (inputs.brand_version, current.brand_version) and (
        inputs.brand_version != current.brand_version
    ):
        reasons.append(f"brand rules v{inputs.brand_version} -> v{current.brand_version}")
    if inputs.model != current.model:
        reasons.append(f"model {inputs.model} -> {current.model}")
    reasons += product_problems(inputs.facts, catalog, inputs.anchor)
    reasons += [
        f"campaign {campaign_id} ended"
        for campaign_id, ends_at in sorted(inputs.campaigns.items())
        if now >= ends_at
    ]
    if max_age_s > 0 and now - generated_at > timedelta(seconds=max_age_s):
        reasons.append(f"older than {max_age_s:g} s")
    return reasons
