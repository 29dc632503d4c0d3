"""Checks a template must pass before it is saved: everything a marketer can get wrong.

Header fields, Jinja syntax, variables the pipeline does not provide, reaches for Python
internals (refused statically, even in a branch no sample takes), and a test render against
sample shoppers. Every problem is reported with its line, all at once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateSyntaxError, nodes

from app.prompting.context import CONTEXT_VARIABLES
from app.prompting.sandbox import TemplateError
from app.prompting.templates import PromptTemplate, parse_template


@dataclass(frozen=True)
class LintProblem:
    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line else self.message


@dataclass(frozen=True)
class LintResult:
    template: PromptTemplate | None  # None when the text does not even parse
    problems: list[LintProblem]
    brand: dict[str, Any] | None = None  # the brand rules' lint: what they parsed to

    @property
    def ok(self) -> bool:
        return (self.template is not None or self.brand is not None) and not self.problems


def _private(name: object) -> bool:
    return isinstance(name, str) and name.startswith("_")


def _static_problems(template: PromptTemplate) -> list[LintProblem]:
    env = template.environment
    try:
        tree = env.parse(template.source)
    except TemplateSyntaxError as error:  # compiled already; kept for safety
        return [LintProblem(error.lineno, f"syntax error: {error.message}")]
    problems: list[LintProblem] = []
    # Names read before any {% set %} / loop defines them: what the context must provide.
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    reported: set[str] = set()
    for name in tree.find_all(nodes.Name):
        if name.ctx != "load" or name.name in CONTEXT_VARIABLES or name.name in assigned:
            continue
        if name.name in reported or name.name in env.globals:
            continue
        reported.add(name.name)
        known = ", ".join(sorted(CONTEXT_VARIABLES))
        problems.append(
            LintProblem(name.lineno, f"unknown variable '{name.name}' (known: {known})")
        )
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        if isinstance(node, nodes.Getattr):
            target: object = node.attr
        elif isinstance(node, nodes.Getitem):
            target = node.arg.value if isinstance(node.arg, nodes.Const) else None
        elif isinstance(node, nodes.Filter):
            first = node.args[0] if node.args else None
            target = first.value if node.name == "attr" and isinstance(first, nodes.Const) else None
        else:
            continue
        if _private(target):
            problems.append(
                LintProblem(node.lineno, f"'{target}': Python internals are not allowed")
            )
    return problems


def lint(
    text: str, name: str, try_render: Callable[[PromptTemplate], None] | None = None
) -> LintResult:
    """Every problem of ``text`` as template ``name``; ``try_render`` renders samples."""
    try:
        template = parse_template(text, f"{name}.j2")
    except TemplateError as error:
        return LintResult(None, [LintProblem(error.line, error.message)])
    problems = []
    if template.name != name:
        problems.append(LintProblem(2, f"header name '{template.name}' is not '{name}'"))
    problems += _static_problems(template)
    if not problems and try_render is not None:
        try:
            try_render(template)
        except TemplateError as error:
            problems.append(LintProblem(error.line, f"test render: {error.message}"))
    return LintResult(template, problems)
