"""Who may change the tracked symbols (POST/DELETE); reads stay open.

* `API_KEY` set: the request needs header `X-API-Key` with that key (constant-time compare),
  else 401.
* `API_KEY` unset: only a client on this host talking to the service directly may mutate, else
  403. Direct and local means all three of:
  - the peer is loopback (127.0.0.0/8, ::1, IPv4-mapped 127.x);
  - no forwarding header (Forwarded, X-Forwarded-*, X-Real-IP, Via, …): a proxy on this host
    makes every client's peer loopback, and a client can write such a header itself — with
    uvicorn trusting proxy headers from 127.0.0.1 (its default), `X-Forwarded-For: 127.0.0.1`
    through a local proxy used to pass as loopback;
  - a loopback Host (localhost, 127.x.x.x, [::1], any port): what a local client addresses;
    a request through a tunnel or proxy that keeps the public name, or a browser page whose
    DNS name was rebound to 127.0.0.1, names another host.
  A proxy or TCP tunnel that forwards none of these (nginx's bare `proxy_pass` sends
  `Host: 127.0.0.1:8000` and no forwarding header; `ssh -L`, `kubectl port-forward`) cannot be
  told apart from a local client: wherever the port is published that way, set API_KEY.
  In-process ASGI test clients count as loopback peers on purpose: Starlette's TestClient
  reports its peer as the host name "testclient" (httpx's ASGITransport as 127.0.0.1); neither
  can come from the network, where the server always reports an IP address.
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
LOOPBACK_NAMES = frozenset({"localhost"})
# Headers a proxy adds to say whom it forwards for.
FORWARDING_HEADERS = frozenset(
    {
        "forwarded",
        "via",
        "x-real-ip",
        "x-client-ip",
        "client-ip",
        "true-client-ip",
        "cf-connecting-ip",
        "fastly-client-ip",
        "x-cluster-client-ip",
        "x-original-forwarded-for",
        "x-proxyuser-ip",
    }
)
FORWARDING_PREFIXES = ("x-forwarded-",)

api_key_header = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="Required for POST/DELETE when the service runs with API_KEY set; "
    "without API_KEY, mutations are accepted only from clients on this host that talk to "
    "the service directly (no proxy, a loopback Host).",
)


def is_loopback(host: str | None) -> bool:
    """Whether the peer address is this machine (or an in-process test client)."""
    if host is None:
        return False
    if host in IN_PROCESS_CLIENTS:
        return True
    return _is_loopback_address(host.split("%", 1)[0])  # drop an IPv6 zone id


def _is_loopback_address(text: str) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback


def is_loopback_host_header(value: str | None) -> bool:
    """Whether a Host header names this machine: localhost, 127.x.x.x or [::1], any port."""
    if not value:
        return False
    if value.startswith("["):  # [IPv6]:port
        address, bracket, port = value[1:].partition("]")
        if not bracket or (port and not (port.startswith(":") and port[1:].isdigit())):
            return False
        return _is_loopback_address(address)
    name, colon, port = value.rpartition(":")
    if not colon:
        name, port = value, ""
    elif not port.isdigit():
        return False
    return name.lower() in LOOPBACK_NAMES or _is_loopback_address(name)


def forwarding_header(request: Request) -> str | None:
    """The first header of the request that a proxy adds, if any (its name)."""
    name: str
    for name in request.headers:  # names in lower case
        if name in FORWARDING_HEADERS or name.startswith(FORWARDING_PREFIXES):
            return name
    return None


def key_matches(given: str | None, expected: SecretStr) -> bool:
    """Constant-time comparison; any header value (even non-ASCII) is simply a mismatch."""
    if given is None:
        return False
    return hmac.compare_digest(
        given.encode("utf-8", "surrogateescape"),
        expected.get_secret_value().encode("utf-8", "surrogateescape"),
    )


def why_not_local(request: Request) -> str | None:
    """Why the request is not from a direct local client (None when it is)."""
    client = request.client.host if request.client else None
    if not is_loopback(client):
        return "the client is not on this host"
    forwarded = forwarding_header(request)
    if forwarded is not None:
        return f"the request came through a proxy ({forwarded} header)"
    hosts = request.headers.getlist("host")
    if len(hosts) != 1 or not is_loopback_host_header(hosts[0]):
        return "its Host header does not name this host (localhost, 127.0.0.1 or [::1])"
    return None


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
    reason = why_not_local(request)
    if reason is not None:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            "without API_KEY, changes are accepted only from clients on this host that talk "
            f"to the service directly; {reason}. Set API_KEY to allow others "
            f"(with the {API_KEY_HEADER} header)",
        )
