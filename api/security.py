"""Who may change the tracked symbols (POST/DELETE); reads stay open.

* `API_KEY` set: the request needs header `X-API-Key` with that key (constant-time compare),
  else 401.
* `API_KEY` unset: only loopback clients (127.0.0.0/8, ::1, IPv4-mapped 127.x) may mutate, else
  403. In-process ASGI test clients are treated as loopback on purpose: Starlette's TestClient
  reports its peer as the host name "testclient" (httpx's ASGITransport as 127.0.0.1); neither
  can come from the network, where the server always reports an IP address.
  Behind a reverse proxy on the same host every client looks local unless uvicorn is told to
  trust the proxy's X-Forwarded-For (`--forwarded-allow-ips`): set API_KEY there.
"""

from __future__ import annotations

import hmac
import ipaddress
from typing import Annotated

from fastapi import HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader
from pydantic import SecretStr

from api.deps import SettingsDep

API_KEY_HEADER = "X-API-Key"
IN_PROCESS_CLIENTS = frozenset({"testclient"})

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Required for POST/DELETE when the service runs with API_KEY set; "
    "without API_KEY, mutations are accepted from loopback clients only.",
)


def is_loopback(host: str | None) -> bool:
    """Whether the peer address is this machine (or an in-process test client)."""
    if host is None:
        return False
    if host in IN_PROCESS_CLIENTS:
        return True
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def key_matches(given: str | None, expected: SecretStr) -> bool:
    """Constant-time comparison; any header value (even non-ASCII) is simply a mismatch."""
    if given is None:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"),
        expected.get_secret_value().encode("utf-8", "surrogateescape"),
    )


async def require_mutation_access(
    request: Request,
    settings: SettingsDep,
    api_key: Annotated[str | None, Security(api_key_header)],
) -> None:
    expected = settings.api.api_key
    if expected is not None:
        if not key_matches(api_key, expected):
            raise HTTPException(
                status.HTTP_401_UNAUTHORIZED, f"missing or invalid {API_KEY_HEADER} header"
            )
        return
    client = request.client.host if request.client else None
    if not is_loopback(client):
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "changes are accepted from this host only; set API_KEY to allow remote clients",
        )
