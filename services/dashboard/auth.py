"""Access control (RELIABILITY §5.4): one token, a login session, and cross-site protection.

- A request is authenticated by `Authorization: Bearer <token>` (scripts) or by the session cookie
  the login page sets (HttpOnly, SameSite=Strict). The cookie is stateless:
  "<expires>.<role>.<nonce>.<mac>" signed with a key derived from the tokens, so sessions survive a
  dashboard restart and changing a token ends them all.
- Two roles: the operator token may act (run now, pause, resume); the optional viewer token only
  reads, and its state-changing requests get 403.
- Every state-changing request (any method but GET/HEAD) is refused with 403 when the browser
  says it comes from another site (Sec-Fetch-Site) or its Origin is not this server, and a
  cookie-authenticated one must also carry the session's CSRF token in X-CSRF-Token.
- Failed logins are limited per client address (429), so the token cannot be guessed online.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import deque
from dataclasses import dataclass

from starlette.requests import HTTPConnection

SESSION_COOKIE = "cropcron_session"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class Principal:
    via: str  # "bearer" or "session"
    role: str  # OPERATOR or VIEWER
    csrf: str  # the token a page must send back on state-changing requests ("" for bearer)


OPERATOR = "operator"
VIEWER = "viewer"


class Auth:
    def __init__(self, token: str, session_ttl: float, login_attempts: int, viewer_token: str | None = None) -> None:
        self._tokens = {OPERATOR: token.encode(), VIEWER: (viewer_token or "").encode()}
        seed = b"cropcron-dashboard-session\0" + self._tokens[VIEWER]
        self._key = hmac.new(self._tokens[OPERATOR], seed, hashlib.sha256).digest()
        self.session_ttl = session_ttl
        self._limit = login_attempts
        self._failures: dict[str, deque[float]] = {}

    # -- credentials ------------------------------------------------------------------
    def check_token(self, candidate: str) -> str | None:
        """The role the token grants, or None. Both are compared, so timing tells nothing."""
        given = candidate.encode()
        matches = {role: hmac.compare_digest(given, token) for role, token in self._tokens.items()}
        if matches[OPERATOR]:
            return OPERATOR
        return VIEWER if matches[VIEWER] and self._tokens[VIEWER] else None

    def new_session(self, role: str) -> str:
        expires = int(time.time() + self.session_ttl)
        body = f"{expires}.{role}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(body)}"

    def principal(self, conn: HTTPConnection) -> Principal | None:
        header = conn.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value:
            role = self.check_token(value.strip())
            return Principal("bearer", role, "") if role else None
        cookie = conn.cookies.get(SESSION_COOKIE)
        if not cookie:
            return None
        body, _, mac = cookie.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or not mac or not hmac.compare_digest(mac, self._mac(body)):
            return None
        expires, role, nonce = parts
        if not expires.isdigit() or int(expires) < time.time() or role not in (OPERATOR, VIEWER):
            return None
        return Principal("session", role, self._mac("csrf." + nonce)[:32])

    def _mac(self, text: str) -> str:
        return hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()

    # -- login rate limit -------------------------------------------------------------
    def login_blocked(self, client: str) -> bool:
        recent = self._failures.get(client)
        if not recent:
            return False
        while recent and recent[0] < time.monotonic() - 60:
            recent.popleft()
        return len(recent) >= self._limit

    def login_failed(self, client: str) -> None:
        if len(self._failures) > 10_000:  # bounded memory under a spray of addresses
            self._failures.clear()
        self._failures.setdefault(client, deque()).append(time.monotonic())


def cross_site(conn: HTTPConnection) -> str | None:
    """Why a state-changing request looks cross-site, or None. Browsers send Sec-Fetch-Site and
    Origin on every POST; a client that sends neither (curl, scripts) is not a browser being
    tricked, and still needs the token."""
    site = conn.headers.get("sec-fetch-site")
    if site is not None and site not in ("same-origin", "none"):
        return f"cross-site request refused (Sec-Fetch-Site: {site})"
    origin = conn.headers.get("origin")
    if origin is not None:
        expected = f"{conn.url.scheme}://{conn.headers.get('host', '')}"
        if origin != expected:
            return f"cross-site request refused (Origin {origin} is not {expected})"
    return None


def csrf_ok(principal: Principal, conn: HTTPConnection) -> bool:
    if principal.via == "bearer":
        return True  # a browser never attaches a bearer header on its own
    sent = conn.headers.get(CSRF_HEADER, "")
    return bool(sent) and hmac.compare_digest(sent, principal.csrf)
