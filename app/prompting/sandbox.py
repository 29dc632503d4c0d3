"""The Jinja environment marketer templates run in: sandboxed, immutable, strict.

Template authors are not code authors: the sandbox refuses Python internals
(``''.__class__.__mro__`` and friends), ``ImmutableSandboxedEnvironment`` refuses mutating
calls (``list.append``), and ``StrictUndefined`` turns a misspelt variable into an error
instead of an empty string in the prompt.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError
from jinja2.exceptions import SecurityError
from jinja2.exceptions import TemplateError as JinjaTemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

# A rendered prompt longer than this is a template bug (a runaway loop), not a prompt.
MAX_RENDERED_CHARS = 20_000


class TemplateError(ValueError):
    """A template that cannot be used, with the template's name and the line at fault."""

    def __init__(self, template: str, line: int | None, message: str) -> None:
        self.template = template
        self.line = line
        self.message = message
        where = f"template '{template}'" + (f" line {line}" if line else "")
        super().__init__(f"{where}: {message}")


def make_environment(
    loader_source: Callable[[str], tuple[str, str]],
) -> ImmutableSandboxedEnvironment:
    """An environment whose templates come from ``loader_source(name) -> (source, filename)``."""
    from jinja2 import FunctionLoader

    def load(name: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename = loader_source(name)
        return source, filename, lambda: False  # always re-read: the registry owns caching

    return ImmutableSandboxedEnvironment(
        loader=FunctionLoader(load),
        undefined=StrictUndefined,
        autoescape=False,  # the output is a prompt, not HTML
        keep_trailing_newline=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _template_line(traceback: TracebackType | None, filename: str) -> int | None:
    """The template line of a render-time error: Jinja rewrites frames to template lines."""
    line = None
    while traceback is not None:
        if traceback.tb_frame.f_code.co_filename == filename:
            line = traceback.tb_lineno
        traceback = traceback.tb_next
    return line


def compile_template(env: ImmutableSandboxedEnvironment, name: str, filename: str) -> Any:
    try:
        return env.get_template(name)
    except TemplateSyntaxError as error:
        raise TemplateError(name, error.lineno, f"syntax error: {error.message}") from None


def render(template: Any, name: str, context: Mapping[str, Any]) -> str:
    """Render, turning every template fault into a TemplateError naming the line."""
    try:
        text = str(template.render(**context))
    except SecurityError as error:
        line = _template_line(error.__traceback__, template.filename)
        raise TemplateError(name, line, f"not allowed in templates: {error}") from None
    except UndefinedError as error:
        line = _template_line(error.__traceback__, template.filename)
        raise TemplateError(name, line, f"undefined variable: {error.message}") from None
    except JinjaTemplateError as error:
        line = _template_line(error.__traceback__, template.filename)
        raise TemplateError(name, line, str(error)) from None
    except (TypeError, ValueError, ArithmeticError, LookupError, OverflowError) as error:
        # Template code doing impossible things ({{ 1/0 }}, {{ "a" + 1 }}) is the author's fault.
        line = _template_line(error.__traceback__, template.filename)
        raise TemplateError(name, line, f"{type(error).__name__}: {error}") from None
    if len(text) > MAX_RENDERED_CHARS:
        raise TemplateError(
            name, None, f"rendered prompt is {len(text)} characters (limit {MAX_RENDERED_CHARS})"
        )
    return text
