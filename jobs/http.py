"""Outgoing HTTP for webhooks, guarded against server-side request forgery (SSRF).

A webhook URL is chosen by a customer, so a worker must not become their way into our own network.
`guarded_client()` returns an `httpx.Client` that refuses, before any packet is sent, destinations that are:

- loopback (127.0.0.0/8, ::1), unspecified (0.0.0.0, ::) and "this network" (0.0.0.0/8);
- private: RFC 1918 (10/8, 172.16/12, 192.168/16) and unique-local IPv6 (fc00::/7);
- link-local (169.254/16, fe80::/10), which covers the cloud metadata address 169.254.169.254;
- shared address space / CGNAT (100.64/10), multicast, reserved and documentation ranges;
- IPv6 forms that embed one of these (IPv4-mapped `::ffff:a.b.c.d`, NAT64 `64:ff9b::/96`, 6to4 `2002::/16`);
- known metadata host names (`metadata.google.internal`, ...) and `localhost` names, by name.

How: the host name is resolved once, every address it resolves to is checked, and the connection is
opened to a checked address itself, so a DNS answer that changes between check and connect (DNS
rebinding) cannot slip through. The request keeps its `Host` header, and TLS keeps its SNI and
certificate check, on the original host name. Redirects are never followed and proxy settings from the
environment are ignored (a proxy would connect on our behalf, unchecked).

`allow` lets chosen destinations through anyway: IP addresses (`127.0.0.1`), networks (`10.0.0.0/8`) or
exact host names (`hooks.internal`; a name allowed this way skips the address check). It is the
catalog setting `FORGEJOBS_CATALOG_WEBHOOK_ALLOW`.

A refusal raises `BlockedDestination`, a subclass of `httpx.TransportError`: code that handles network
failures in general still catches it, and code that cares (the webhook handler) catches it first and
treats it as permanent, since asking again gives the same answer.

`unsendable(url)` says why httpx could not send to a URL at all (say `http://0177.0.0.1/`, whose octal
looking address httpx refuses with `httpx.InvalidURL`, not an `httpx.HTTPError`), so such a URL is refused
when an endpoint is created and fails a delivery at once instead of being retried.

Logs: hook URLs often carry a secret in their path or query, and httpx logs every request line
(`HTTP Request: POST https://host/path?query ...`) at INFO. `guarded_client()` installs `OriginOnly` on
the `httpx` logger, which cuts every URL in its records down to `scheme://host[:port]`, and keeps
`httpcore` (connection-level DEBUG traces) at WARNING unless it was given a level of its own.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

METADATA_HOSTS = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
        "metadata.tencentyun.com",
        "metadata.platformequinix.com",
    }
)
"""Host names of cloud instance-metadata services, refused by name whatever they resolve to."""

_BLOCKED_V4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network", includes 0.0.0.0
        "10.0.0.0/8",
        "100.64.0.0/10",  # shared address space (CGNAT)
        "127.0.0.0/8",
        "169.254.0.0/16",  # link-local, includes the metadata address 169.254.169.254
        "172.16.0.0/12",
        "192.0.0.0/24",  # IETF protocol assignments
        "192.0.2.0/24",  # documentation
        "192.168.0.0/16",
        "198.18.0.0/15",  # benchmarking
        "198.51.100.0/24",  # documentation
        "203.0.113.0/24",  # documentation
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, includes 255.255.255.255
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class BlockedDestination(httpx.TransportError):
    """The guarded client refused to connect: the destination is internal and not in the allow-list.

    `host` is the host name of the URL, `address` the offending address (None when refused by name) and
    `reason` what kind of address it is. Permanent: retrying cannot change the answer.
    """

    def __init__(self, host: str, address: str | None, reason: str) -> None:
        self.host = host
        self.address = address
        self.reason = reason
        where = host if address is None or address == host else f"{host} ({address})"
        super().__init__(
            f"refusing to connect to {where}: {reason}; webhooks may only reach public addresses "
            "unless the destination is in the allow-list (FORGEJOBS_CATALOG_WEBHOOK_ALLOW)"
        )


def blocked_reason(address: IPAddress) -> str | None:
    """Why `address` is not a public destination (e.g. "private address"), or None if it is public."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            inner = blocked_reason(embedded)
            return None if inner is None else f"{inner} {embedded} embedded in IPv6"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address (includes cloud metadata)"
    if address.is_multicast:
        return "multicast address"
    if isinstance(address, ipaddress.IPv4Address):
        for network in _BLOCKED_V4:
            if address in network:
                return f"non-public address (in {network})"
    else:
        if address.is_site_local:
            return "site-local address"
        if address in ipaddress.IPv6Network("fc00::/7"):
            return "private address (unique local, fc00::/7)"
    if address.is_private or address.is_reserved or not address.is_global:
        return "non-public address"
    return None


@dataclass(frozen=True)
class AllowList:
    """Destinations let through although internal: networks (a single IP is a /32 or /128) and host names."""

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Read `127.0.0.1`, `10.0.0.0/8`, `::1`, `[::1]` or `hooks.internal`; a malformed network raises."""
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for raw in entries:
            entry = raw.strip().strip("[]")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                if "/" in entry or ":" in entry:
                    raise ValueError(f"webhook allow-list entry {raw!r} is not an IP address or network") from None
                hosts.add(_normalise_host(entry))
        return cls(tuple(networks), frozenset(hosts))

    def allows_host(self, host: str) -> bool:
        return _normalise_host(host) in self.hosts

    def allows_address(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)  # ::ffff:127.0.0.1 is allowed where 127.0.0.1 is
        return any(a.version == net.version and a in net for a in candidates for net in self.networks)


def _normalise_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _parse_ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


class GuardedBackend(httpcore.SyncBackend):
    """An httpcore network backend that resolves, checks, and connects to the checked address only."""

    def __init__(self, allow: AllowList) -> None:
        self.allow = allow

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """The addresses to try for `host`, after one DNS resolution; raise `BlockedDestination` if any is
        refused (one bad answer is reason enough to distrust the name)."""
        name = _normalise_host(host)
        named = self.allow.allows_host(name)
        if not named:
            if name in METADATA_HOSTS:
                raise BlockedDestination(host, None, "cloud metadata host name")
            if name == "localhost" or name.endswith(".localhost"):
                raise BlockedDestination(host, None, "localhost name")
        try:
            answers = socket.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        addresses: list[IPAddress] = []
        for _family, _type, _proto, _canon, sockaddr in answers:
            address = _parse_ip(str(sockaddr[0]))
            if address is None:
                raise BlockedDestination(host, str(sockaddr[0]), "unparseable address in the DNS answer")
            if not named and not self.allow.allows_address(address):
                reason = blocked_reason(address)
                if reason is not None:
                    raise BlockedDestination(host, str(address), reason)
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise httpcore.ConnectError(f"{host} resolved to no address")
        return addresses

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self.resolve(host, port):
            try:
                # A literal address: the parent's create_connection does no further DNS lookup.
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # resolve() returned at least one address
        raise last

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        raise BlockedDestination(path, None, "unix sockets are not webhook destinations")


class GuardedTransport(httpx.HTTPTransport):
    """`httpx.HTTPTransport` whose connections all go through a `GuardedBackend`.

    httpx 0.28 has no public parameter for httpcore's `network_backend`, so the transport swaps its
    connection pool for one built with the same settings plus the guarded backend; everything else
    (request conversion, exception mapping, response streaming) stays httpx's own.
    """

    def __init__(self, allow: AllowList, *, limits: httpx.Limits = httpx.Limits(), retries: int = 0) -> None:
        super().__init__(trust_env=False, limits=limits, retries=retries)
        if not isinstance(getattr(self, "_pool", None), httpcore.ConnectionPool):
            raise RuntimeError("this httpx version keeps no httpcore pool in HTTPTransport._pool; update jobs.http")
        self.backend = GuardedBackend(allow)
        self._pool.close()
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            retries=retries,
            network_backend=self.backend,
        )


def unsendable(url: str) -> str | None:
    """Why httpx cannot send a request to `url` (e.g. `Invalid IPv4 address: '0177.0.0.1'`), or None if it can.

    Only the URL's form is checked here, not its destination (that is the guard's job, when connecting)."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        return str(exc) or "invalid URL"
    if parsed.scheme not in ("http", "https"):
        return f"unsupported scheme {parsed.scheme!r}"
    if not parsed.host:
        return "no host"
    if parsed.port is not None and not 0 < parsed.port < 65536:
        return f"Invalid port: {parsed.port} is not between 1 and 65535"
    return None


_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?:[^/?#\s\"'<>@]*@)?(?P<host>[^/?#\s\"'<>]*)[^\s\"'<>]*")


def origin_only(text: str) -> str:
    """`text` with every URL in it cut down to its origin: `POST https://h/p?q=1 ok` -> `POST https://h ok`."""
    return _URL.sub(lambda m: m["scheme"] + m["host"], text)


class OriginOnly(logging.Filter):
    """A logging filter that keeps every record but cuts the URLs in its message down to their origin."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        shown = origin_only(message)
        if shown != message:
            record.msg, record.args = shown, None
        return True


def quiet_url_logs() -> None:
    """Keep webhook URLs' paths and queries out of third-party logs: `OriginOnly` on the `httpx` logger, and
    `httpcore` at WARNING unless configured. Idempotent; `guarded_client()` calls it."""
    httpx_logger = logging.getLogger("httpx")
    if not any(isinstance(f, OriginOnly) for f in httpx_logger.filters):
        httpx_logger.addFilter(OriginOnly())
    httpcore_logger = logging.getLogger("httpcore")
    if httpcore_logger.level == logging.NOTSET:
        httpcore_logger.setLevel(logging.WARNING)


def guarded_client(*, allow: Sequence[str] = (), timeout: float = 10.0) -> httpx.Client:
    """An httpx client that refuses loopback, private, link-local and metadata destinations unless allowed.

    `allow` holds IP addresses, networks (CIDR) or exact host names let through anyway; `timeout` applies
    to connecting, each read and each write. Redirects are not followed (a 3xx is returned as is), and
    proxy environment variables are ignored. A refused destination raises `BlockedDestination`. Also calls
    `quiet_url_logs()`, so httpx's request log lines name the origin only.
    """
    quiet_url_logs()
    return httpx.Client(
        transport=GuardedTransport(AllowList.parse(allow)),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
    )
