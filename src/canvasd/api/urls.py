"""The base of the `url`s the server hands out (stored images), and whom it believes about it.

`X-Forwarded-Host` / `-Proto` / `-Prefix` can be sent by anyone; a server that follows them from
any client lets that client make it hand out links to another host. They are honoured only when
the TCP peer is one of the proxies named in `forwarded_allow_ips` (IPs or CIDR networks, ``*`` for
any; default: none). Otherwise the base is `public_base_url` when set, else the request's own
scheme, ``Host`` header and ASGI root path.

uvicorn must not apply forwarded headers itself (its default trusts 127.0.0.1 and rewrites the
scheme and client address before the app sees them): the server is started with
``proxy_headers=False`` (see `canvasd.server`).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from functools import cached_property

from starlette.requests import Request


@dataclass(frozen=True)
class TrustedProxies:
    entries: tuple[str, ...]

    @cached_property
    def _networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(e, strict=False) for e in self.entries if e != "*")

    def trusts(self, peer: str | None) -> bool:
        if not self.entries or peer is None:
            return False
        if "*" in self.entries:
            return True
        try:
            addr = ipaddress.ip_address(peer)
        except ValueError:  # a unix socket path or a test client's name
            return False
        return any(addr in net for net in self._networks)


def _first(request: Request, name: str) -> str | None:
    value = request.headers.get(name)
    if not value:
        return None
    return value.split(",")[0].strip() or None


def public_base(request: Request, *, public_base_url: str | None, proxies: TrustedProxies) -> str:
    root = request.scope.get("root_path", "").strip("/")
    peer = request.client.host if request.client else None
    if proxies.trusts(peer) and any(request.headers.get(h) for h in (
            "x-forwarded-host", "x-forwarded-proto", "x-forwarded-prefix")):
        proto = _first(request, "x-forwarded-proto") or request.url.scheme
        host = _first(request, "x-forwarded-host") or request.headers.get("host") or request.url.netloc
        prefix = (_first(request, "x-forwarded-prefix") or "").strip("/")
        path = "/".join(x for x in (prefix, root) if x)
        return f"{proto}://{host}" + (f"/{path}" if path else "")
    if public_base_url:
        return public_base_url.rstrip("/")
    host = request.headers.get("host") or request.url.netloc
    return f"{request.url.scheme}://{host}" + (f"/{root}" if root else "")
