"""Which callback URLs InferenceHub may POST to (issue 25, completion webhooks).

A callback URL is the uploader's, and the POST is made from inside our network: left
unchecked it would let anyone reach the database, the metadata service of the cloud or an
admin page on loopback (server-side request forgery). So a URL is refused unless it is
http(s) and every address its host resolves to is a public one; the operator lists the
exceptions (a receiver on the private network) in WEBHOOK_ALLOWED_NETWORKS. The upload
checks it, and the sender again just before each attempt, since DNS may answer otherwise
by then.

Here, on the ground floor, because the uploads (predictions) and the sender (webhooks)
both need it and predictions must not import webhooks."""

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from django.conf import settings

CALLBACK_URL_MAX = 500

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Metadata services that do not sit in a range refused anyway (169.254.169.254 is
# link-local, fd00:ec2::254 unique-local): Alibaba's is in the shared range 100.64.0.0/10,
# Oracle's in the IETF protocol block.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "192.0.0.192", "169.254.169.254")
)
_HOSTNAME = re.compile(r"(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9-]{1,63})*")


class CallbackRefused(ValueError):
    """The URL may not be called; the message says why, for the uploader's 400."""


class Unresolvable(CallbackRefused):
    """Its host did not resolve: refused at upload, but only a failed attempt at send time,
    when DNS may be briefly away."""


@dataclass(frozen=True)
class AllowList:
    """The operator's exceptions: networks, and host names allowed whatever they resolve to."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    def allows_host(self, host: str) -> bool:
        return host.lower() in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def parse_allow_list(value: str) -> AllowList:
    """WEBHOOK_ALLOWED_NETWORKS: comma-separated networks (10.0.0.0/8, 127.0.0.1, ::1)
    and host names (hooks.internal). Raises ValueError naming the item that is neither."""
    networks: list[IPNetwork] = []
    hosts: set[str] = set()
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
            continue
        except ValueError:
            pass
        if "/" in item or not _HOSTNAME.fullmatch(item.lower()):
            raise ValueError(f"{item!r} is neither an IP network nor a host name")
        hosts.add(item.lower())
    return AllowList(networks=tuple(networks), hosts=frozenset(hosts))


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host resolves to, as the HTTP client would connect to it."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [ipaddress.ip_address(info[4][0].split("%", 1)[0]) for info in infos]


# In this order: a loopback address is private too, and is said to be loopback.
_KINDS = (
    ("loopback", "a loopback address"),
    ("unspecified", "an unspecified address"),
    ("link_local", "a link-local address"),
    ("multicast", "a multicast address"),
    ("private", "a private address"),
    ("reserved", "a reserved address"),
)


def address_problem(address: IPAddress) -> str | None:
    """Why this address may not be called, or None for a public one."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    for kind, said in _KINDS:
        if getattr(address, f"is_{kind}"):
            return said
    if not address.is_global:
        return "not a public address"
    return None


def check_callback_url(
    url: str,
    *,
    allowed: AllowList | None = None,
    resolver: Callable[[str, int], Iterable[IPAddress]] = resolve,
) -> IPAddress | None:
    """Raise CallbackRefused unless url is http(s) and its host is allow-listed or resolves
    only to addresses that are public or allow-listed. Returns the address to connect to
    (the first the host resolved to), or None for a host allow-listed by name, which is
    trusted whatever it resolves to. allowed: by default the setting's; resolver: socket's,
    which tests replace."""
    allowed = settings.WEBHOOK_ALLOWED_NETWORKS if allowed is None else allowed
    if len(url) > CALLBACK_URL_MAX:
        raise CallbackRefused(f"must be at most {CALLBACK_URL_MAX} characters")
    if any(char.isspace() or not char.isprintable() for char in url):
        # A receiver or a log reading the URL must not be handed a line break.
        raise CallbackRefused("must not contain white space or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise CallbackRefused(f"is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise CallbackRefused("must be an http or https URL")
    host = parts.hostname
    if not host:
        raise CallbackRefused("has no host")
    if parts.username or parts.password:
        # Credentials in the URL would be sent and shown back in the job's answer.
        raise CallbackRefused("must not carry a user name or password")
    if allowed.allows_host(host):
        return None
    try:
        addresses = list(resolver(host, port))
    except (OSError, UnicodeError) as exc:
        raise Unresolvable(f"host {host} does not resolve: {exc}") from None
    if not addresses:
        raise Unresolvable(f"host {host} does not resolve")
    for address in addresses:
        if allowed.allows_address(address):
            continue
        if problem := address_problem(address):
            shown = host if host == str(address) else f"{host} ({address})"
            raise CallbackRefused(f"is refused: {shown} is {problem}")
    return addresses[0]
