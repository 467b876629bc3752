"""Dashboard sessions: the login cookie and the CSRF tokens of forms.

The session *is* the API token, kept in a cookie the browser sends back
(``HttpOnly``: page scripts never read it; ``SameSite=Strict``: other sites'
pages never make the browser send it; ``Secure`` under TLS; ``Path=/``; no
``Max-Age``, so it ends with the browser session).  No session table lives
on the server: every request authenticates the token again through the same
path as the REST API, so revoking or expiring a token ends its dashboard
sessions at once, and sessions survive restarts and work across server
processes.

Every form that changes something carries a CSRF token the server checks
on ``POST``:

* once logged in, the token is derived from the session cookie
  (:func:`csrf_token`: a keyed hash, so it reveals nothing of the API token
  and another site cannot compute it);
* the login form comes before any session: it uses a random value kept in a
  second cookie (:data:`LOGIN_COOKIE`), which the form must repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

from starlette.requests import Request
from starlette.responses import Response

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "clear_session",
    "csrf_matches",
    "csrf_token",
    "login_csrf",
    "set_login_csrf",
    "set_session",
]

#: The cookie holding the API token of a logged-in browser.
SESSION_COOKIE: Final = "sciserve_session"
#: The cookie holding the CSRF value of the login form.
LOGIN_COOKIE: Final = "sciserve_login"
_CSRF_CONTEXT: Final = b"sciserve dashboard csrf v1"
#: The longest cookie or form value looked at (an API token or a JWT fits).
MAX_VALUE: Final = 8192


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _set(request: Request, response: Response, name: str, value: str) -> None:
    response.set_cookie(
        name,
        value,
        path="/",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )


def set_session(request: Request, response: Response, token: str) -> None:
    """Log the browser in with ``token``."""
    _set(request, response, SESSION_COOKIE, token)
    response.delete_cookie(LOGIN_COOKIE, path="/", secure=_secure(request), httponly=True)


def clear_session(request: Request, response: Response) -> None:
    """Log the browser out."""
    response.delete_cookie(
        SESSION_COOKIE, path="/", secure=_secure(request), httponly=True, samesite="strict"
    )


def session_token(request: Request) -> str | None:
    """The API token of the browser's session, if it sent one of a sane size."""
    value = request.cookies.get(SESSION_COOKIE)
    if not value or len(value) > MAX_VALUE:
        return None
    return value


def csrf_token(session: str) -> str:
    """The CSRF token of the forms of the session whose cookie is ``session``."""
    return hmac.new(session.encode(), _CSRF_CONTEXT, hashlib.sha256).hexdigest()


def login_csrf(request: Request) -> str:
    """The CSRF value of the login form: the browser's, or a new one."""
    value = request.cookies.get(LOGIN_COOKIE)
    if value and len(value) == 43 and value.isascii():
        return value
    return secrets.token_urlsafe(32)


def set_login_csrf(request: Request, response: Response, value: str) -> None:
    _set(request, response, LOGIN_COOKIE, value)


def csrf_matches(expected: str | None, sent: str | None) -> bool:
    """Whether a form's CSRF field is the value it must be (in constant time)."""
    if not expected or not sent or len(sent) > MAX_VALUE:
        return False
    return hmac.compare_digest(expected.encode(), sent.encode())
