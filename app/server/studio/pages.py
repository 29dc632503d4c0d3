"""The studio's pages. HTML forms post here; every action goes through ``StudioService``.

Sign-in takes a marketer's API key once and opens a session: an encrypted HttpOnly,
SameSite=Strict cookie holding the key's id and name, never the key. A guard looks the key up
on every page (a revoked or expired key stops working at once); a session ends after 8 hours.
Forms carry a CSRF token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.exceptions import NotAuthorizedException
from litestar.response import Redirect, Template

from app.server.auth import (
    CHALLENGE,
    FORM,
    PAGE_SCOPES,
    SESSION_PATH,
    actor,
    open_session,
    signed_in,
    to_login,
)
from app.server.errors import Problem
from app.server.studio.service import (
    PRODUCTION,
    LintFailed,
    LintProblem,
    Preview,
    StudioService,
)

TEMPLATES = Path(__file__).parent / "templates"
LEGACY_COOKIE = "marquee_studio_key"  # where older versions kept the key itself: cleared
MAX_PAGE_PREVIEW_BANNERS = 2
SHOPPERS_LISTED = 200


@dataclass
class SaveForm:
    source: str
    message: str = ""
    base_version: int = 0
    shopper_id: str = ""
    generate: int = 0
    draft: bool = False
    action: str = "save"


@dataclass
class LabelForm:
    version: int
    label: str = PRODUCTION
    expected: int = 0


@dataclass
class LoginForm:
    key: str


CONTEXT_LINES = 3


def _lines(source: str, problems: list[LintProblem]) -> list[dict[str, Any]]:
    """The lines around each problem, numbered, with the problem under its line.

    A gap between two windows is one entry with ``gap: True``.
    """
    by_line: dict[int, list[str]] = {}
    for problem in problems:
        if problem.line:
            by_line.setdefault(problem.line, []).append(problem.message)
    text = source.splitlines()
    wanted = sorted(
        {
            n
            for line in by_line
            for n in range(line - CONTEXT_LINES, line + CONTEXT_LINES + 1)
            if 1 <= n <= len(text)
        }
    )
    shown: list[dict[str, Any]] = []
    for n in wanted:
        if shown and shown[-1]["number"] != n - 1:
            shown.append({"gap": True, "number": n - 1})
        shown.append(
            {"gap": False, "number": n, "text": text[n - 1], "problems": by_line.get(n, [])}
        )
    return shown


class StudioSignIn(Controller):
    path = "/studio"
    include_in_schema = False

    @get("/login")
    async def login_page(self, next: str = "/studio", error: str = "") -> Template:
        return Template("login.html", context={"next": next, "error": error})

    @post("/login")
    async def login(
        self,
        request: Request[Any, Any, State],
        data: Annotated[LoginForm, FORM],
        next: str = "/studio",
    ) -> Response[Any]:
        opened = await open_session(request, data.key.strip(), PAGE_SCOPES)
        if opened is None:
            return Template(
                "login.html",
                context={"next": next, "error": "That key is unknown or has no marketer scope."},
                status_code=401,
                headers={"WWW-Authenticate": CHALLENGE},  # every 401 carries a challenge
            )
        request.set_session(opened)  # the key's id, not the key: checked on every page
        target = next if next.startswith("/studio") else "/studio"
        return Redirect(target, cookies=_forget_legacy_cookie(request))

    @post("/logout")
    async def logout(self, request: Request[Any, Any, State]) -> Response[Any]:
        request.clear_session()
        return Redirect("/studio/login", cookies=_forget_legacy_cookie(request))


def _forget_legacy_cookie(request: Request[Any, Any, State]) -> list[Cookie]:
    """A browser signed in by an older version still holds the raw key: delete it."""
    if LEGACY_COOKIE not in request.cookies:
        return []
    return [Cookie(key=LEGACY_COOKIE, value="", max_age=0, path=SESSION_PATH)]


class StudioPages(Controller):
    path = "/studio"
    include_in_schema = False
    guards = [signed_in]
    exception_handlers = {NotAuthorizedException: to_login}

    @get("/")
    async def index(self, request: Request[Any, Any, State], studio: StudioService) -> Template:
        who = actor(request)
        rows = await studio.summaries()
        return Template("index.html", context={"who": who, "templates": rows})

    async def _editor(
        self,
        who: str,
        studio: StudioService,
        name: str,
        *,
        version: int | None = None,
        source: str | None = None,
        base_version: int | None = None,
        problems: list[LintProblem] | None = None,
        preview: Preview | None = None,
        notice: str = "",
        error: str = "",
        shopper_id: str = "",
        diff_from: int | None = None,
        status_code: int = 200,
    ) -> Template:
        try:
            versions = await studio.versions(name)
        except Problem:
            return Template("missing.html", context={"who": who, "name": name}, status_code=404)
        shown = next((v for v in versions if v.version == version), versions[0])
        labels = await studio.labels(name)
        placement = studio.placement(name) or ""  # "": only drafts so far
        diff = ""
        if diff_from is not None:
            try:
                diff = (await studio.diff(name, diff_from, shown.version)).diff
            except Problem as missing:
                error = missing.detail
        experiment = await studio.experiment(placement) if placement else None
        shoppers = studio.shopper_ids(SHOPPERS_LISTED)
        text = shown.source if source is None else source
        return Template(
            "editor.html",
            context={
                "who": who,
                "name": name,
                "shown": shown,
                "base_version": base_version or versions[0].version,
                "versions": versions,
                "labels": labels,
                "labels_by_version": _labels_by_version(labels),
                "source": text,
                "lines": _lines(text, problems or []),
                "problems": problems or [],
                "preview": preview,
                "notice": notice,
                "error": error,
                "shoppers": shoppers,
                "shopper_id": shopper_id or (shoppers[0] if shoppers else "anonymous"),
                "diff": diff,
                "diff_from": diff_from,
                "experiment": experiment,
                "placement": placement,
            },
            status_code=status_code,
        )

    @get("/templates/{name:str}")
    async def editor(
        self,
        request: Request[Any, Any, State],
        studio: StudioService,
        name: str,
        version: int | None = None,
        diff: int | None = None,
        notice: str = "",
    ) -> Template:
        return await self._editor(
            actor(request), studio, name, version=version, diff_from=diff, notice=notice
        )

    @post("/templates/{name:str}")
    async def submit(
        self,
        request: Request[Any, Any, State],
        studio: StudioService,
        name: str,
        data: Annotated[SaveForm, FORM],
    ) -> Response[Any]:
        who = actor(request)
        source = data.source.replace("\r\n", "\n")
        if data.action == "preview":
            shopper = data.shopper_id or "anonymous"
            try:
                preview = await studio.preview(
                    name,
                    shopper,
                    source=source,
                    generate=max(0, min(data.generate, MAX_PAGE_PREVIEW_BANNERS)),
                )
            except Problem as refused:  # busy, or a shopper id that is no id
                return await self._editor(
                    who,
                    studio,
                    name,
                    source=source,
                    base_version=data.base_version,
                    error=f"No preview: {refused.detail}",
                    shopper_id=shopper,
                    status_code=refused.status_code,
                )
            return await self._editor(
                who,
                studio,
                name,
                source=source,
                base_version=data.base_version,
                problems=preview.problems,
                preview=preview,
                shopper_id=shopper,
            )
        try:
            stored = await studio.save(
                name,
                source,
                author=who,
                message=data.message.strip()[:300] or "edited in the studio",
                draft=data.draft,
                expected_latest=data.base_version or None,
            )
        except LintFailed as failed:
            return await self._editor(
                who,
                studio,
                name,
                source=source,
                base_version=data.base_version,
                problems=failed.problems,
                error=f"Not saved: {len(failed.problems)} problem(s) to fix first.",
                status_code=422,
            )
        except Problem as refused:
            return await self._editor(
                who,
                studio,
                name,
                source=source,
                base_version=data.base_version,
                error=f"Not saved: {refused.detail}. Your text is kept below.",
                status_code=refused.status_code,
            )
        note = f"Saved version {stored.version}"
        if stored.draft:
            note += f" as a draft ({len(stored.problems)} lint problem(s) left)"
        return Redirect(f"/studio/templates/{name}?version={stored.version}&notice={quote(note)}")

    @post("/templates/{name:str}/label")
    async def label(
        self,
        request: Request[Any, Any, State],
        studio: StudioService,
        name: str,
        data: Annotated[LabelForm, FORM],
    ) -> Response[Any]:
        who = actor(request)
        try:
            moved = await studio.move_label(
                name,
                data.label,
                data.version,
                actor=who,
                expected_current=data.expected or None,
                check_expected=True,
            )
        except Problem as refused:
            return await self._editor(
                who,
                studio,
                name,
                version=data.version,
                error=refused.detail,
                status_code=refused.status_code,
            )
        note = f"'{data.label}' now serves version {data.version} (was {moved.previous})"
        return Redirect(f"/studio/templates/{name}?version={data.version}&notice={quote(note)}")


def _labels_by_version(labels: dict[str, int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for label, version in sorted(labels.items()):
        found.setdefault(version, []).append(label)
    return found
