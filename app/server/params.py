"""Path parameters, built from the constrained strings in ``app.domain`` (declared there once).

A value that breaks the rule is a 400 naming the parameter, before any handler runs.
"""

from __future__ import annotations

from typing import Annotated

from litestar.params import Parameter

from app.domain import IDENTIFIER_PATTERN, LABEL_PATTERN, NAME_PATTERN

IdPath = Annotated[
    str, Parameter(pattern=IDENTIFIER_PATTERN, description="1-64 of [A-Za-z0-9_.:-]")
]
NamePath = Annotated[
    str, Parameter(pattern=NAME_PATTERN, description="2-49 of [a-z0-9_], from a letter")
]
LabelPath = Annotated[
    str, Parameter(pattern=LABEL_PATTERN, description="2-40 of [a-z0-9_-], from a letter")
]
