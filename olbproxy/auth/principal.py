"""Principal: who is asking, as established by authentication, carried on the request."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from aiohttp import web

Role = Literal["admin", "user"]


@dataclass(frozen=True, slots=True)
class Principal:
    id: str
    name: str
    role: Role = "user"
    # None: every group; otherwise the names of the groups this user may use.
    groups: frozenset[str] | None = None
    # How they proved it: token, key, basic, trusted (network), open (auth disabled),
    # anonymous (a public path while auth is on).
    via: str = "token"
    # A key marked as a trusted front-end (Open WebUI) may name its end users.
    front_end: bool = False
    key_id: str | None = None
    # Open WebUI's X-OpenWebUI-Chat-Id, only when a trusted front-end key names its end
    # user: the room that persistence may file the exchange under.
    room_hint: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


# When authentication is switched off (tests of routing alone, or an explicit choice).
OPEN = Principal(id="anonymous", name="anonymous", role="admin", via="open")
# On the public paths (``/``, ``/api/auth/*``) when authentication is on: no group, no role.
ANONYMOUS = Principal(id="anonymous", name="anonymous", groups=frozenset(), via="anonymous")

# The request's principal, set by the authentication middleware (aiohttp wants typed keys).
PRINCIPAL = web.RequestKey("principal", Principal)


def principal_of(request: web.Request) -> Principal:
    """Who is asking; set by the edge before any handler runs."""
    return request[PRINCIPAL]
