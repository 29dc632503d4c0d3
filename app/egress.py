"""Where the service may send a request someone else chose the address of (webhook URLs).

Without this check, a URL naming 127.0.0.1, 10.0.0.0/8, a cloud's metadata address
(169.254.169.254) or a host name that resolves to one of them would let whoever registers a
webhook reach services that are meant to be private to the service's network (server-side
request forgery). So, unless ``MARQUEE_WEBHOOK_ALLOW_PRIVATE`` says this network is the one
meant (a receiver on the same host in development):

- at registration, a literal address or ``localhost`` that is not public is refused at once;
- at each delivery, the host name is resolved and *every* address it resolves to must be
  public; the connection then goes to the address that was checked (the name still in the
  Host header and in TLS's SNI and certificate check), so a name that resolves elsewhere a
  moment later (DNS rebinding) reaches nothing new.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class ForbiddenTarget(ValueError):
    """The URL leads into a private network (or cannot be resolved to check)."""


def address_problem(address: Address) -> str | None:
    """Why a request may not go to ``address`` (None: it is a public one)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is 127.0.0.1
    if address.is_loopback:
        return f"{address} is a loopback address"
    if address.is_link_local:
        return f"{address} is link-local (cloud metadata services live there)"
    if address.is_private:
        return f"{address} is a private address"
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return f"{address} is not a unicast address"
    if not address.is_global:
        return f"{address} is not a public address"
    return None


def _literal_address(host: str) -> Address | None:
    """The address a URL's host is written as (None: it is a name)."""
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def literal_problem(host: str) -> str | None:
    """What is wrong with a URL's host seen without resolving it: a literal address that is
    not public, or ``localhost`` (None: nothing seen; a name is checked when resolved)."""
    name = host.rstrip(".").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return f"{host} is this host"
    address = _literal_address(name)
    return None if address is None else address_problem(address)


@dataclass(frozen=True)
class Pinned:
    """A request to ``url`` rewritten to go to one checked address."""

    url: httpx.URL  # the same URL with the checked address as its host
    headers: dict[str, str]  # Host: the name, as the receiver expects it
    extensions: dict[str, str]  # sni_hostname: TLS is negotiated and verified for the name


async def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (the system's resolver, off the event loop)."""
    found = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in found]


async def pin_public(
    url: str, resolver: Callable[[str, int], Awaitable[list[str]]] = resolve
) -> Pinned:
    """Resolve ``url``'s host and check every address; the request pinned to the first."""
    parsed = httpx.URL(url)
    host = parsed.host
    problem = literal_problem(host)
    if problem:
        raise ForbiddenTarget(problem)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        found = await resolver(host, port)
    except socket.gaierror as error:
        raise ForbiddenTarget(f"cannot resolve {host}: {error.strerror or error}") from None
    addresses = list(dict.fromkeys(ipaddress.ip_address(a.split("%")[0]) for a in found))
    for address in addresses:
        problem = address_problem(address)
        if problem:
            raise ForbiddenTarget(f"{host} resolves to {problem}")
    if not addresses:
        raise ForbiddenTarget(f"cannot resolve {host}")
    named = _literal_address(host) is None
    return Pinned(
        url=parsed.copy_with(host=str(addresses[0])),
        headers={"host": parsed.netloc.decode("ascii")},
        extensions={"sni_hostname": host} if named and parsed.scheme == "https" else {},
    )
