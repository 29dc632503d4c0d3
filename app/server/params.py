"""Path parameters, built from the constrained strings in ``app.domain`` (declared there once),
and the text body a handler reads itself (TextBody).

A value that breaks the rule is a 400 naming the parameter, before any handler runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from litestar.openapi.spec import OpenAPIMediaType, OpenAPIType, Operation, RequestBody, Schema
from litestar.params import Parameter

from app.domain import (
    IDENTIFIER_CHARS,
    IDENTIFIER_PATTERN,
    KEY_ID_PATTERN,
    LABEL_PATTERN,
    MAX_VERSION,
    NAME_PATTERN,
)
from app.prompting.templates import MAX_TEMPLATE_BYTES

IdPath = Annotated[
    str, Parameter(pattern=IDENTIFIER_PATTERN, description=f"1-64 of [{IDENTIFIER_CHARS}]")
]
NamePath = Annotated[
    str, Parameter(pattern=NAME_PATTERN, description="2-49 of [a-z0-9_], from a letter")
]
LabelPath = Annotated[
    str, Parameter(pattern=LABEL_PATTERN, description="2-40 of [a-z0-9_-], from a letter")
]
KeyIdPath = Annotated[
    str, Parameter(pattern=KEY_ID_PATTERN, description="1-32 of [A-Za-z0-9]: mq_<id>_...")
]
# A template version, in the path or the query.
VersionParam = Annotated[int, Parameter(ge=1, le=MAX_VERSION, description="a version number")]


@dataclass
class TextBody(Operation):
    """The OpenAPI operation of a handler that reads a text/plain body itself (a template file):
    Litestar documents only a ``data`` argument's body, so this declares the one it reads."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description=f"the file: UTF-8 text, 1 to {MAX_TEMPLATE_BYTES} bytes",
            content={
                "text/plain": OpenAPIMediaType(schema=Schema(type=OpenAPIType.STRING, min_length=1))
            },
        )
