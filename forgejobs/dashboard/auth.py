"""Who may use the dashboard, and proof that a POST came from one of its own pages.

- **Auth is required.** `create_app` refuses to build an app without one of: a `TokenAuth`, a
  `BasicAuth` (a user name and password), or a hook (`request -> user name or None`, sync or async)
  through which the host application's own login decides. Token and password are compared in
  constant time. A browser logs in once on the login page and gets a signed session cookie (HttpOnly,
  SameSite=Lax, 12 h); scripts may send `Authorization: Bearer <token>` or `Basic ...` instead.
  Changing the token or password ends every session.
- **CSRF on every POST.** Each browser gets a random `forgejobs_csrf` cookie (HttpOnly,
  SameSite=Strict); every form carries an HMAC of it, and a POST whose field does not match is refused
  with 403 before anything is done. Login and logout included.

Signing uses `secret_key` (FORGEJOBS_DASHBOARD_SECRET_KEY), or a random key per process: then sessions
end when the process restarts, and several processes behind one address need the same key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import inspect
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["AuthHook", "BasicAuth", "Signer", "TokenAuth", "authenticate", "credentials_from_header"]

SESSION_COOKIE = "forgejobs_session"
CSRF_COOKIE = "forgejobs_csrf"
CSRF_FIELD = "csrf_token"
SESSION_SECONDS = 12 * 3600


@dataclass(frozen=True)
class TokenAuth:
    """One shared secret token: typed on the login page, or sent as `Authorization: Bearer <token>`."""

    token: str

    def __post_init__(self) -> None:
        if len(self.token) < 8:
            raise ValueError("the dashboard token must be at least 8 characters")

    def check(self, username: str | None, secret: str) -> str | None:
        return "token" if hmac.compare_digest(secret.encode(), self.token.encode()) else None

    def fingerprint(self) -> bytes:
        return hashlib.sha256(b"token|" + self.token.encode()).digest()


@dataclass(frozen=True)
class BasicAuth:
    """A user name and password: typed on the login page, or sent as HTTP Basic credentials."""

    username: str
    password: str

    def __post_init__(self) -> None:
        if not self.username or len(self.password) < 8:
            raise ValueError("basic auth needs a user name and a password of at least 8 characters")

    def check(self, username: str | None, secret: str) -> str | None:
        same_user = hmac.compare_digest((username or "").encode(), self.username.encode())
        same_password = hmac.compare_digest(secret.encode(), self.password.encode())
        return self.username if same_user and same_password else None

    def fingerprint(self) -> bytes:
        return hashlib.sha256(f"basic|{self.username}|{self.password}".encode()).digest()


AuthHook = Callable[["Request"], "str | None | Awaitable[str | None]"]
"""The host application's auth: return the user's name, or None to refuse (403)."""


class Signer:
    """HMAC-SHA256 signatures with one key: session cookies and CSRF tokens."""

    def __init__(self, key: bytes) -> None:
        self.key = key

    def sign(self, purpose: str, value: str) -> str:
        digest = hmac.new(self.key, f"{purpose}|{value}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")

    def csrf_token(self, cookie: str) -> str:
        return self.sign("csrf", cookie)

    def csrf_ok(self, cookie: str | None, field: str | None) -> bool:
        if not cookie or not field:
            return False
        return hmac.compare_digest(self.csrf_token(cookie).encode(), field.encode())

    def session(self, user: str, fingerprint: bytes) -> str:
        body = base64.urlsafe_b64encode(json.dumps({"u": user, "e": int(time.time()) + SESSION_SECONDS}).encode())
        text = body.decode()
        return f"{text}.{self.sign('session|' + fingerprint.hex(), text)}"

    def session_user(self, cookie: str | None, fingerprint: bytes) -> str | None:
        if not cookie or "." not in cookie:
            return None
        body, _, signature = cookie.rpartition(".")
        if not hmac.compare_digest(self.sign("session|" + fingerprint.hex(), body).encode(), signature.encode()):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            return None
        if not isinstance(data, dict) or int(data.get("e", 0)) < time.time():
            return None
        user = data.get("u")
        return user if isinstance(user, str) else None


def new_key() -> bytes:
    return secrets.token_bytes(32)


def credentials_from_header(header: str | None) -> tuple[str | None, str] | None:
    """(user name or None, secret) from `Authorization: Bearer ...` or `Basic ...`; None when absent."""
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value:
        return None, value.strip()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip()).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        user, _, password = decoded.partition(":")
        return user, password
    return None


async def authenticate(request: Request, auth: Any, signer: Signer) -> str | None:
    """The user a request comes from, or None."""
    if isinstance(auth, (TokenAuth, BasicAuth)):
        given = credentials_from_header(request.headers.get("authorization"))
        if given is not None:
            return auth.check(*given)
        return signer.session_user(request.cookies.get(SESSION_COOKIE), auth.fingerprint())
    result = auth(request)
    if inspect.isawaitable(result):
        result = await result
    return result if isinstance(result, str) and result else None
