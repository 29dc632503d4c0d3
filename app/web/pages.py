"""The studio's pages. HTML forms post here; every action goes through ``app.studio.Studio``.

Sign-in takes a marketer's API key and keeps it in an HttpOnly, SameSite=Strict cookie; every
page checks it again (a revoked key stops working at once). Forms carry a CSRF token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import quote

from litestar import Controller, Request, Response, get, post
from litestar.datastructures import Cookie, State
from litestar.enums import RequestEncodingType
from litestar.exceptions import NotAuthorizedException
from litestar.params import Body
from litestar.response import Redirect, Template

from app.pipeline import BannerRequest
from app.prompting.lint import LintProblem
from app.prompting.templates import PRODUCTION
from app.store.templates import Conflict
from app.studio import LintFailed, Preview, Studio

COOKIE = "marquee_studio_key"
WRITE_SCOPES = frozenset({"marketer", "admin"})
MAX_PREVIEW_BANNERS = 2


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


Form = Body(media_type=RequestEncodingType.URL_ENCODED)


async def signed_in(request: Request[Any, Any, State]) -> str:
    """The signed-in marketer's key name; sends anyone else to the sign-in page."""
    key = request.cookies.get(COOKIE, "")
    found = await request.app.state.api_keys.verify(key) if key else None
    if found is None or not found[1] & WRITE_SCOPES:
        raise NotAuthorizedException("sign in with a marketer key")
    return str(found[0])


def to_login(request: Request[Any, Any, Any], _: Exception) -> Response[Any]:
    return Redirect(f"/studio/login?next={quote(request.url.path)}")


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


class StudioPages(Controller):
    path = "/studio"
    include_in_schema = False
    exception_handlers = {NotAuthorizedException: to_login}

    @get("/login")
    async def login_page(self, next: str = "/studio", error: str = "") -> Template:
        return Template("login.html", context={"next": next, "error": error})

    @post("/login")
    async def login(
        self,
        request: Request[Any, Any, State],
        data: Annotated[LoginForm, Form],
        next: str = "/studio",
    ) -> Response[Any]:
        found = await request.app.state.api_keys.verify(data.key.strip())
        if found is None or not found[1] & WRITE_SCOPES:
            return Template(
                "login.html",
                context={"next": next, "error": "That key is unknown or has no marketer scope."},
                status_code=401,
            )
        target = next if next.startswith("/studio") else "/studio"
        return Redirect(
            target,
            cookies=[
                Cookie(
                    key=COOKIE,
                    value=data.key.strip(),
                    httponly=True,
                    samesite="strict",
                    secure=request.url.scheme == "https",
                    path="/studio",
                    max_age=8 * 3600,
                )
            ],
        )

    @post("/logout")
    async def logout(self) -> Response[Any]:
        return Redirect(
            "/studio/login", cookies=[Cookie(key=COOKIE, value="", max_age=0, path="/studio")]
        )

    @get("/")
    async def index(self, request: Request[Any, Any, State], studio: Studio) -> Template:
        who = await signed_in(request)
        rows = await studio.summaries()
        return Template("index.html", context={"who": who, "templates": rows})

    async def _editor(
        self,
        who: str,
        studio: Studio,
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
        versions = await studio.store.versions(name)
        if not versions:
            return Template("missing.html", context={"who": who, "name": name}, status_code=404)
        shown = next((v for v in versions if v.version == version), versions[0])
        labels = (await studio.store.labels(name)).get(name, {})
        try:
            placement = studio.pipeline.templates.get(name).header.placement
        except KeyError:  # only drafts so far
            placement = ""
        diff = ""
        if diff_from is not None:
            try:
                diff = await studio.diff(name, diff_from, shown.version)
            except LookupError as missing:
                error = str(missing)
        experiment = await studio.experiment(placement) if placement else None
        shoppers = [s.id for s in studio.pipeline.shoppers.all()][:200]
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
        studio: Studio,
        name: str,
        version: int | None = None,
        diff: int | None = None,
        notice: str = "",
    ) -> Template:
        who = await signed_in(request)
        return await self._editor(who, studio, name, version=version, diff_from=diff, notice=notice)

    @post("/templates/{name:str}")
    async def submit(
        self,
        request: Request[Any, Any, State],
        studio: Studio,
        name: str,
        data: Annotated[SaveForm, Form],
    ) -> Response[Any]:
        who = await signed_in(request)
        source = data.source.replace("\r\n", "\n")
        if data.action == "preview":
            shopper = data.shopper_id or "anonymous"
            preview = await studio.preview(
                name,
                BannerRequest(shopper_id=shopper),
                source=source,
                generate=max(0, min(data.generate, MAX_PREVIEW_BANNERS)),
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
            stored, problems = await studio.save(
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
        except Conflict as conflict:
            return await self._editor(
                who,
                studio,
                name,
                source=source,
                base_version=data.base_version,
                error=f"Not saved: {conflict}. Your text is kept below.",
                status_code=409,
            )
        note = f"Saved version {stored.version}"
        if stored.draft:
            note += f" as a draft ({len(problems)} lint problem(s) left)"
        return Redirect(f"/studio/templates/{name}?version={stored.version}&notice={quote(note)}")

    @post("/templates/{name:str}/label")
    async def label(
        self,
        request: Request[Any, Any, State],
        studio: Studio,
        name: str,
        data: Annotated[LabelForm, Form],
    ) -> Response[Any]:
        who = await signed_in(request)
        try:
            previous = await studio.move_label(
                name,
                data.label,
                data.version,
                actor=who,
                expected_current=data.expected or None,
                check_expected=True,
            )
        except (Conflict, LookupError, ValueError) as refused:
            return await self._editor(
                who, studio, name, version=data.version, error=str(refused), status_code=409
            )
        note = f"'{data.label}' now serves version {data.version} (was {previous})"
        return Redirect(f"/studio/templates/{name}?version={data.version}&notice={quote(note)}")


def _labels_by_version(labels: dict[str, int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for label, version in sorted(labels.items()):
        found.setdefault(version, []).append(label)
    return found
