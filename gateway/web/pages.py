"""The admin UI's pages: one template environment, one layout, one login.

Pages are rendered server-side with Jinja2 (autoescaping on). The layout
loads one stylesheet and one script, both served from ``/ui/static/``, and
nothing inline, so the content-security policy forbids inline script and
style outright. A UI section (the review queue, incidents) registers its
template directory under its name and its place in the navigation; its
templates extend ``layout.html``.

Who is looking: a session cookie set by ``/login`` (forms then carry the
session's CSRF token), or a bearer token (scripts; no CSRF token needed, as
a browser never sends one by itself).
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import jinja2
from aiohttp import web
from multidict import MultiDictProxy

from gateway.web.auth import TOKENS, Principal
from gateway.web.sessions import COOKIE, LOGIN_COOKIE, SESSIONS, Session, same

HERE = Path(__file__).parent
STATIC = HERE / "static"
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css"}
# ``data:`` images: an image finding's thumbnails are inline JPEGs (they cannot run script)
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    # same-origin, not no-referrer: with no-referrer browsers send "Origin: null" on
    # form posts, and the origin check could not tell our own forms from others
    "referrer-policy": "same-origin",
    "cache-control": "no-store",
}
LOGIN_TTL = 1800


# -- filters the templates use -----------------------------------------------------------
def relative(deadline: float, now: float | None = None) -> str:
    now = time.time() if now is None else now
    delta = deadline - now
    word = "in" if delta >= 0 else "overdue by"
    secs = abs(delta)
    if secs < 90:
        amount = f"{int(secs)}s"
    elif secs < 5400:
        amount = f"{int(secs // 60)}m"
    elif secs < 172800:
        amount = f"{secs / 3600:.1f}h"
    else:
        amount = f"{secs / 86400:.1f}d"
    return f"{word} {amount}"


def stamp(ts: float | None) -> str:
    if ts is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def pretty(value: Any, limit: int = 20000) -> str:
    text = json.dumps(value, indent=2, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "\n… (truncated)"


def fields(value: Any, limit: int = 300) -> list[tuple[str, str]]:
    """Evidence as labelled fields for a page: ``source_id`` → "source id", values as text.

    Nested values are shown as compact JSON, long ones cut, so a reviewer
    reads fields rather than a serialised dictionary.
    """
    if not isinstance(value, dict):
        return [("value", _shown(value, limit))] if value not in (None, "", {}, []) else []
    return [
        (str(key).replace("_", " "), _shown(item, limit))
        for key, item in value.items()
        if item not in (None, "", {}, [])
    ]


def _shown(value: Any, limit: int) -> str:
    if isinstance(value, float):
        text = f"{value:.4g}"
    elif isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True)
class Section:
    name: str
    label: str
    # the section's pages live under this path (a login may return there)
    root: str
    # place in the navigation; the first section is where a login lands
    order: int


@dataclass(frozen=True)
class Viewer:
    """Who is looking at a page, and the CSRF token their forms must carry."""

    principal: Principal
    # None for a bearer token: no cookie, so no cross-site request to guard against
    csrf: str | None


class Pages:
    def __init__(self, *, secure_cookie: bool = False) -> None:
        self.secure_cookie = secure_cookie
        self.sections: list[Section] = []
        self._loaders: dict[str, jinja2.BaseLoader] = {}
        self.env = jinja2.Environment(
            loader=jinja2.ChoiceLoader(
                [
                    jinja2.FileSystemLoader(str(HERE / "templates")),
                    jinja2.PrefixLoader(self._loaders),
                ]
            ),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["relative"] = relative
        self.env.filters["stamp"] = stamp
        self.env.filters["pretty"] = pretty
        self.env.filters["fields"] = fields

    def add_section(
        self, name: str, label: str, root: str, templates: Path, *, order: int = 100
    ) -> None:
        """A UI's templates (``name/page.html``) and its place in the navigation."""
        self._loaders[name] = jinja2.FileSystemLoader(str(templates))
        self.sections.append(Section(name, label, root, order))
        self.sections.sort(key=lambda s: (s.order, s.name))

    def render(
        self,
        request: web.Request,
        template: str,
        *,
        viewer: Viewer | None,
        title: str,
        status: int = 200,
        **ctx: Any,
    ) -> web.Response:
        started = time.perf_counter()
        html = self.env.get_template(template).render(
            viewer=viewer, title=title, sections=self.sections, path=request.path, **ctx
        )
        headers = dict(SECURITY_HEADERS)
        headers["server-timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.2f}"
        return web.Response(text=html, content_type="text/html", status=status, headers=headers)

    def error(
        self, request: web.Request, viewer: Viewer | None, status: int, title: str, message: str
    ) -> web.Response:
        return self.render(
            request, "error.html", viewer=viewer, title=title, status=status, message=message
        )

    def refuse(
        self, request: web.Request, viewer: Viewer | None, message: str
    ) -> web.HTTPForbidden:
        """A 403 page to raise: the form or the role does not allow what was asked."""
        page = self.error(request, viewer, 403, "Forbidden", message)
        return web.HTTPForbidden(
            body=page.body, content_type="text/html", headers=dict(SECURITY_HEADERS)
        )

    def owns(self, path: str) -> bool:
        """Whether ``path`` is a page for a browser, whose errors are pages too."""
        if path in ("/login", "/logout") or path.startswith("/ui/"):
            return True
        return any(path == s.root.rstrip("/") or path.startswith(s.root) for s in self.sections)

    def safe_next(self, value: Any) -> str:
        """A page of ours to return to after login; anything else could bounce off-site."""
        text = value if isinstance(value, str) else ""
        parts = urlsplit(text)
        if not parts.scheme and not parts.netloc and "\\" not in text and "//" not in text:
            if any(text.startswith(s.root) for s in self.sections):
                return text
        return self.sections[0].root if self.sections else "/"


PAGES = web.AppKey("pages", Pages)


def redirect(location: str) -> web.HTTPSeeOther:
    return web.HTTPSeeOther(location, headers=SECURITY_HEADERS)


# -- who is looking --------------------------------------------------------------------------
# the viewer of a request, once looked up: an error page after a failed form needs it again
VIEWER: web.RequestKey[Viewer | None] = web.RequestKey("viewer")


async def session_of(request: web.Request) -> Session | None:
    return await request.app[SESSIONS].get(request.cookies.get(COOKIE))


async def viewer_of(request: web.Request) -> Viewer | None:
    """Who is looking: a bearer token's principal, or the session's; None for nobody.

    Raises ``StoreUnavailable`` when the store cannot say whether the session lives.
    """
    if VIEWER in request:
        return request[VIEWER]
    principal = request.app[TOKENS].from_request(request)
    if principal is not None:
        viewer: Viewer | None = Viewer(principal, None)
    else:
        session = await session_of(request)
        viewer = Viewer(session.principal, session.csrf) if session is not None else None
    request[VIEWER] = viewer
    return viewer


async def need_viewer(request: web.Request) -> Viewer:
    """The viewer, or a redirect to the login page that comes back here."""
    viewer = await viewer_of(request)
    if viewer is None:
        raise redirect("/login?" + urlencode({"next": request.path_qs}))
    return viewer


def same_origin(request: web.Request) -> bool:
    """Browsers send Origin on POST; one from another site is refused outright."""
    origin = request.headers.get("origin")
    if not origin or origin == "null":
        return origin is None
    return urlsplit(origin).netloc == request.host


async def posted_form(
    request: web.Request, role: str = "reviewer"
) -> tuple[Viewer, MultiDictProxy[Any]]:
    """Who posted, and the form once its origin, CSRF token and ``role`` are checked.

    Raises the login redirect or a 403 page.
    """
    viewer = await need_viewer(request)
    pages = request.app[PAGES]
    form = await request.post()
    if not same_origin(request):
        raise pages.refuse(request, viewer, "This form was posted from another site.")
    if viewer.csrf is not None and not same(form.get("csrf"), viewer.csrf):
        raise pages.refuse(
            request, viewer, "Missing or wrong form token; reload the page and try again."
        )
    if not viewer.principal.has(role):
        raise pages.refuse(request, viewer, f"This needs the {role} role.")
    return viewer, form


def field(form: MultiDictProxy[Any], name: str) -> str:
    """A form value as text (a file upload where text belongs counts as empty)."""
    value = form.get(name)
    return value if isinstance(value, str) else ""


# -- login ------------------------------------------------------------------------------------
def _set_cookie(
    request: web.Request, resp: web.StreamResponse, name: str, value: str, max_age: float
) -> None:
    # the whole admin listener, so every UI shares the login; the JSON API ignores
    # cookies (bearer tokens only), so it gains no CSRF exposure
    resp.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=request.app[PAGES].secure_cookie,
        max_age=int(max_age),
    )


def _login_page(request: web.Request, next_url: str, error: str | None, status: int):
    pages = request.app[PAGES]
    nonce = secrets.token_urlsafe(24)
    resp = pages.render(
        request,
        "login.html",
        viewer=None,
        title="Log in",
        status=status,
        csrf=request.app[SESSIONS].login_csrf(nonce),
        next=pages.safe_next(next_url),
        error=error,
    )
    _set_cookie(request, resp, LOGIN_COOKIE, nonce, LOGIN_TTL)
    return resp


async def login_form(request: web.Request) -> web.Response:
    return _login_page(request, request.query.get("next", ""), None, 200)


async def login(request: web.Request) -> web.StreamResponse:
    pages, sessions = request.app[PAGES], request.app[SESSIONS]
    form = await request.post()
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not same_origin(request) or not sessions.check_login_csrf(nonce, field(form, "csrf")):
        return pages.error(
            request,
            None,
            403,
            "Forbidden",
            "The login form expired or came from elsewhere; reload the login page and try again.",
        )
    token = field(form, "token").strip()
    principal = request.app[TOKENS].lookup(token) if token else None
    if principal is None or not principal.has("reviewer"):
        return _login_page(request, field(form, "next"), "That token is not valid.", 401)
    session = await sessions.create(principal)
    resp = redirect(pages.safe_next(field(form, "next")))
    _set_cookie(request, resp, COOKIE, session.id, sessions.ttl)
    resp.del_cookie(LOGIN_COOKIE, path="/")
    return resp


async def logout(request: web.Request) -> web.StreamResponse:
    await posted_form(request)
    await request.app[SESSIONS].drop(request.cookies.get(COOKIE))
    resp = redirect("/login")
    resp.del_cookie(COOKIE, path="/")
    return resp


async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    path = STATIC / name
    if "/" in name or path.suffix not in STATIC_TYPES or not path.is_file():
        raise web.HTTPNotFound()
    headers = dict(SECURITY_HEADERS, **{"cache-control": "max-age=300"})
    return web.Response(
        body=path.read_bytes(), content_type=STATIC_TYPES[path.suffix], headers=headers
    )


def install_pages(app: web.Application, pages: Pages) -> None:
    app[PAGES] = pages
    app.router.add_get("/login", login_form)
    app.router.add_post("/login", login)
    app.router.add_post("/logout", logout)
    app.router.add_get("/ui/static/{name}", static)
