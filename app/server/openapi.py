"""The API's contract in OpenAPI (/docs, /docs/openapi.json): the API-key scheme, and every
problem an operation can answer with, as clients really get it (app/server/errors.py).

Litestar documents a handler's success response and a 400 of its own shape. The problems a
request can meet on its way in are the same for every handler built the same way, so they are
derived here, in one place, as each route is registered:

- input (parameters or a body): 400 invalid-request; a body: 413 too-large;
- a guard (an API key): the security requirement, 401, 403, 429 (rate limiting is coming) and
  503 storage-unavailable (the key is looked up in the database);
- a service that loads in the background (banners, catalog, studio): 503 not-ready.

What a handler's own service refuses beyond those (a lookup's 404, 409, 422, 503 busy ...) the
handler names with ``opt=problems(...)`` (errors.py): only the code behind it knows.

Request bodies are documented as pydantic validates them (PydanticContract): Litestar 2.25 leaves
out what a model forbids (extra members) and the constraints inside ``X | None``. An optional
header or query parameter is documented as one to leave out, not as nullable (ContractOperation).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, fields
from typing import Any

from litestar.constants import RESERVED_KWARGS
from litestar.handlers import HTTPRouteHandler
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import (
    Components,
    Example,
    OpenAPIType,
    Operation,
    Reference,
    Schema,
    SecurityScheme,
)
from litestar.openapi.spec import Parameter as OpenAPIParameter
from litestar.plugins import ReceiveRoutePlugin
from litestar.plugins.pydantic import PydanticSchemaPlugin
from litestar.routes import BaseRoute, HTTPRoute
from litestar.typing import FieldDefinition
from pydantic.errors import PydanticInvalidForJsonSchema

from app.server.auth import HEADER
from app.server.errors import (
    PROBLEM_JSON,
    PROBLEM_TYPES,
    PROBLEMS_OPT,
    TYPE_PREFIX,
    ProblemDetails,
)
from app.server.params import TextBody
from app.server.services import (
    provide_banners,
    provide_catalog,
    provide_jobs,
    provide_placements,
    provide_review,
    provide_studio,
)

SCHEME = "apiKey"
# Providers that answer 503 not-ready until the pipeline has loaded (app/server/services.py).
_LOADED_LATER = {
    provide_banners,
    provide_catalog,
    provide_studio,
    provide_jobs,
    provide_placements,
    provide_review,
}


def openapi_config() -> OpenAPIConfig:
    return OpenAPIConfig(
        title="Marquee",
        version="0.1.0",
        path="/docs",
        components=Components(
            security_schemes={
                SCHEME: SecurityScheme(
                    type="apiKey",
                    name=HEADER,
                    security_scheme_in="header",
                    description="An API key; its scopes (cms, marketer, admin) decide what it "
                    "may do: 401 without a valid key, 403 without the scope.",
                )
            }
        ),
    )


def _kinds(handler: HTTPRouteHandler) -> list[str]:
    """Every problem kind the handler can answer with, in the table's order."""
    dependencies = handler.resolve_dependencies()
    inputs = [
        name
        for name in handler.parsed_fn_signature.parameters
        if name not in dependencies and (name == "data" or name not in RESERVED_KWARGS)
    ]
    # A handler that reads its body itself documents it with an operation class (TextBody).
    has_body = "data" in inputs or issubclass(handler.operation_class, TextBody)
    kinds = set(handler.opt.get(PROBLEMS_OPT, ()))
    if inputs or has_body:
        kinds.add("invalid-request")
    if has_body:
        kinds.add("too-large")
    if handler.resolve_guards():
        kinds |= {"unauthorized", "forbidden", "rate-limited", "storage-unavailable"}
    if any(
        name in dependencies and dependencies[name].dependency in _LOADED_LATER
        for name in handler.parsed_fn_signature.parameters
    ):
        kinds.add("not-ready")
    return [kind for kind in PROBLEM_TYPES if kind in kinds]


def _problem_responses(kinds: list[str]) -> dict[int, ResponseSpec]:
    """One response per status; its description names the problem types a client may see."""
    by_status: dict[int, list[str]] = defaultdict(list)
    for kind in kinds:
        by_status[PROBLEM_TYPES[kind][0]].append(kind)
    responses = {}
    for status, same in by_status.items():
        title = PROBLEM_TYPES[same[0]][1]
        example = {
            "type": TYPE_PREFIX + same[0],
            "title": title,
            "status": status,
            "detail": title,
            "instance": "/v1/...",
        }
        responses[status] = ResponseSpec(
            ProblemDetails,
            description=" | ".join(f"{TYPE_PREFIX}{kind}" for kind in same),
            media_type=PROBLEM_JSON,
            generate_examples=False,
            examples=[Example(summary=same[0], value=example)],
        )
    return responses


class ProblemDocs(ReceiveRoutePlugin):
    """Documents each operation's problems and security as its route is registered."""

    def receive_route(self, route: BaseRoute) -> None:
        if not isinstance(route, HTTPRoute):
            return
        for handler in route.route_handlers:
            if not handler.resolve_include_in_schema():
                continue
            if handler.operation_class is Operation:  # not one of its own (TextBody)
                handler.operation_class = ContractOperation
            # What the handler declares itself (304, a readiness 503 ...) wins.
            handler.responses = {**_problem_responses(_kinds(handler)), **(handler.responses or {})}
            if handler.resolve_guards():
                handler.security = [{SCHEME: []}]


def _set(schema: Schema) -> dict[str, Any]:
    """The attributes set on a schema (a 0 bound is set)."""
    return {f.name: value for f in fields(schema) if (value := getattr(schema, f.name)) is not None}


def _not_null(schema: Schema) -> Schema:
    """``oneOf: [X, null]`` with constraints beside it, as the one schema X with them."""
    arms = schema.one_of or []
    kept = [arm for arm in arms if not (isinstance(arm, Schema) and arm.type == OpenAPIType.NULL)]
    if len(kept) != 1 or len(kept) == len(arms) or not isinstance(kept[0], Schema):
        return schema
    beside = {name: value for name, value in _set(schema).items() if name != "one_of"}
    return Schema(**{**_set(kept[0]), **beside})


@dataclass
class ContractOperation(Operation):
    """Every documented operation: an optional parameter is one a client leaves out, but
    Litestar documents an ``X | None`` parameter as nullable, and a header or query value
    "null" is a string, not a null."""

    def __post_init__(self) -> None:
        for parameter in self.parameters or ():
            if (
                isinstance(parameter, OpenAPIParameter)
                and not parameter.required
                and isinstance(parameter.schema, Schema)
            ):
                parameter.schema = _not_null(parameter.schema)


# JSON Schema keywords pydantic writes that Litestar may drop, and the Schema attribute for each.
_CONSTRAINTS = {
    "pattern": "pattern",
    "minLength": "min_length",
    "maxLength": "max_length",
    "minimum": "minimum",
    "maximum": "maximum",
    "exclusiveMinimum": "exclusive_minimum",
    "exclusiveMaximum": "exclusive_maximum",
    "minItems": "min_items",
    "maxItems": "max_items",
}


def _restore(schema: Schema | Reference, pydantic: dict[str, Any]) -> None:
    """Copy the constraints pydantic enforces onto Litestar's schema where Litestar lost them."""
    if not isinstance(schema, Schema):
        return  # a component: fixed when it is built
    for keyword, attribute in _CONSTRAINTS.items():
        if keyword in pydantic and getattr(schema, attribute) is None:
            setattr(schema, attribute, pydantic[keyword])
    items = pydantic.get("items")
    if isinstance(schema.items, Schema) and isinstance(items, dict):
        # A constrained ``tuple[str, ...]`` comes out as items ``oneOf: [string, {}]`` (the
        # ``...`` read as an item type): any item would pass. Pydantic says which type it is.
        if any(arm == Schema() for arm in schema.items.one_of or ()) and "type" in items:
            schema.items = Schema(type=OpenAPIType(items["type"]))
        _restore(schema.items, items)
    # ``X | None``: Litestar's oneOf and pydantic's anyOf list the same arms in the same order.
    arms = pydantic.get("anyOf") or pydantic.get("oneOf") or []
    if schema.one_of and len(schema.one_of) == len(arms):
        for ours, theirs in zip(schema.one_of, arms, strict=True):
            _restore(ours, theirs)


class PydanticContract(PydanticSchemaPlugin):
    """Litestar's schema of a pydantic model, plus what pydantic enforces and Litestar 2.25
    leaves out: ``additionalProperties: false`` where the model forbids extra members, and the
    constraints of ``X | None`` fields (a pattern, a minimum, an array's items)."""

    @classmethod
    def for_pydantic_model(cls, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().for_pydantic_model(field_definition, schema_creator)
        model = field_definition.annotation
        if model.model_config.get("extra") == "forbid":
            schema.additional_properties = False
        try:
            documented = model.model_json_schema(mode="validation").get("properties", {})
        except PydanticInvalidForJsonSchema:  # a type pydantic cannot describe: Litestar's alone
            return schema
        for name, prop in (schema.properties or {}).items():
            if name in documented:
                _restore(prop, documented[name])
        return schema
