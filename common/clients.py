"""Who a request comes from, behind the reverse proxy."""

import functools
import ipaddress

from django.conf import settings
from django.http import HttpRequest


@functools.cache
def _networks(
    trusted: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(address) for address in trusted)


def is_trusted_proxy(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in _networks(tuple(settings.TRUSTED_PROXIES)))


def client_address(request: HttpRequest) -> str:
    """The client's IP address: the one the proxy saw, when the request came through one
    of TRUSTED_PROXIES; otherwise the connection's own. The proxy (stack/nginx.conf) sets
    X-Forwarded-For to that one address; the last entry is taken all the same, as the one
    a trusted proxy added, never one a client wrote."""
    remote = request.META.get("REMOTE_ADDR", "")
    if is_trusted_proxy(remote):
        forwarded = request.META.get("HTTP_X_FORWARDED_FOR", "").split(",")[-1].strip()
        if forwarded:
            return forwarded
    return remote
