"""Tokens and identity for tests/fake_graph.py: debug_token, /me, /me/accounts, and the
long-lived token exchange and refresh endpoints of Facebook, Instagram Login and Threads."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, Any

from tests.fake_graph_rules import Call, GraphError, Token, invalid_parameter, no_such_object, unknown_token

if TYPE_CHECKING:
    from tests.fake_graph import FakeGraph

# The fake world: one app, one Facebook user managing one Page with its Instagram account, one
# Threads profile, and the tokens each starts with (see FakeGraph.__post_init__).
APP_ID, APP_SECRET, APP_NAME = "1234567890123456", "fake-app-secret-5c1e", "siar test app"
FB_USER_ID, PAGE_ID = "10160000000000001", "104233468117325"
IG_USER_ID, THREADS_USER_ID = "17841405822304914", "25001234567890123"
PAGE_TOKEN, USER_TOKEN = "EAAPageTokenForTests", "EAAUserTokenForTests"
IG_LOGIN_TOKEN, THREADS_TOKEN = "IGAATokenForTests", "THAATokenForTests"
DAY = 86400
LONG_LIVED = 60 * DAY
_serials = itertools.count(1)


class TokenDesk:
    """The token endpoints; tokens themselves live in `FakeGraph.tokens`."""

    def __init__(self, graph: FakeGraph) -> None:
        self.graph = graph

    async def debug_token(self, call: Call) -> dict[str, Any]:
        value = call.params.get("input_token", "")
        if not value:
            raise invalid_parameter("(#100) The parameter input_token is required")
        token = self.graph.tokens.get(value)
        if token is None or token.host != call.host:
            return {
                "data": {
                    "error": {"code": 190, "message": "Invalid OAuth access token."},
                    "is_valid": False,
                    "scopes": [],
                }
            }
        problem = token.problem(call.now, APP_ID)
        data: dict[str, Any] = {
            "app_id": APP_ID,
            "type": token.kind,
            "application": APP_NAME,
            "data_access_expires_at": int(token.data_access_expires_at),
            "expires_at": int(token.expires_at),
            "is_valid": problem is None,
            "issued_at": int(token.issued_at),
            "scopes": sorted(token.scopes),
            "user_id": token.user_id,
        }
        if token.kind == "PAGE":
            data["profile_id"] = token.profile_id
        if problem:
            data["error"] = {"code": problem.code, "message": problem.message, "subcode": problem.subcode}
        return {"data": data}

    async def me(self, call: Call) -> dict[str, Any]:
        token = call.token
        if call.host == "graph":
            values = {
                "id": token.profile_id or token.user_id,
                "name": self.graph.page.name if token.kind == "PAGE" else "Siar Tester",
            }
            names = call.fields("id,name", {"id", "name"}, "User")
        else:
            values = {"id": token.user_id, "user_id": token.user_id, "username": "siar.test"}
            names = call.fields("id", {"id", "user_id", "username"}, "User")
        return {n: values[n] for n in names}

    async def accounts(self, call: Call) -> dict[str, Any]:
        if call.token.kind != "USER":
            raise no_such_object("accounts")
        call.need("pages_show_list")
        page = {
            "access_token": PAGE_TOKEN,
            "category": "News & media website",
            "id": PAGE_ID,
            "name": self.graph.page.name,
            "tasks": ["ANALYZE", "ADVERTISE", "MODERATE", "CREATE_CONTENT", "MANAGE"],
        }
        return {"data": [page]}

    def _new_long_lived(self, old: Token) -> dict[str, Any]:
        value = f"{old.value[:4]}LL{next(_serials):06d}"
        self.graph.add_token(
            value, host=old.host, kind=old.kind, scopes=old.scopes, user_id=old.user_id, expires_in=LONG_LIVED
        )
        return {"access_token": value, "token_type": "bearer", "expires_in": LONG_LIVED}

    def _subject(self, value: str, host: str) -> Token:
        token = self.graph.tokens.get(value)
        if token is None or token.host != host:
            raise unknown_token()
        problem = token.problem(self.graph.now, APP_ID)
        if problem:
            raise problem
        return token

    async def exchange_facebook(self, call: Call) -> dict[str, Any]:
        """GET /oauth/access_token?grant_type=fb_exchange_token: a long-lived user token."""
        p = call.params
        if p.get("grant_type") != "fb_exchange_token" or p.get("client_id") != APP_ID:
            raise invalid_parameter("(#100) Invalid grant_type or client_id")
        if p.get("client_secret") != APP_SECRET:
            raise GraphError(400, 1, "Error validating client secret.")
        return self._new_long_lived(self._subject(p.get("fb_exchange_token", ""), "graph"))

    async def exchange_threads(self, call: Call) -> dict[str, Any]:
        """GET graph.threads.net/access_token?grant_type=th_exchange_token"""
        p = call.params
        if p.get("grant_type") != "th_exchange_token":
            raise invalid_parameter("Param grant_type must be th_exchange_token")
        if p.get("client_secret") != APP_SECRET:
            raise GraphError(400, 1, "Error validating client secret.")
        return self._new_long_lived(self._subject(p["access_token"], "threads"))

    async def refresh(self, call: Call) -> dict[str, Any]:
        """GET /refresh_access_token (th_refresh_token / ig_refresh_token): a long-lived token at
        least 24 hours old and unexpired gets 60 more days (as a new token; the old one lives on)."""
        grant = {"threads": "th_refresh_token", "instagram": "ig_refresh_token"}[call.host]
        if call.params.get("grant_type") != grant:
            raise invalid_parameter(f"Param grant_type must be {grant}")
        token = self._subject(call.params["access_token"], call.host)
        if call.now - token.issued_at < DAY:  # the error's wording is ASSUMED
            raise invalid_parameter("The access token can be refreshed once it is at least 24 hours old.")
        return self._new_long_lived(token)
