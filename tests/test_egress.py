"""Webhook URLs never lead into the service's own network (app/egress.py)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import pytest

from app.egress import ForbiddenTarget, literal_problem, pin_public


def resolving(*addresses: str) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver that answers ``addresses`` for any name."""

    async def resolver(host: str, port: int) -> list[str]:
        return list(addresses)

    return resolver


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("127.8.9.10", "loopback"),
        ("localhost", "this host"),
        ("api.localhost", "this host"),
        ("169.254.169.254", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.0.10", "private"),
        ("[::1]", "loopback"),
        ("[fe80::1]", "link-local"),
        ("[fd00::1]", "private"),
        ("[::ffff:10.0.0.1]", "private"),  # an IPv4 address written as IPv6
        ("0.0.0.0", "private"),
        ("100.64.0.1", "not a public address"),  # carrier-grade NAT
        ("224.0.0.1", "not a unicast address"),
    ],
)
def test_addresses_that_are_not_public_are_refused_as_written(host: str, why: str) -> None:
    problem = literal_problem(host)
    assert problem is not None and why in problem


@pytest.mark.parametrize("host", ["93.184.216.34", "[2606:4700:4700::1111]", "hooks.example.com"])
def test_public_addresses_and_names_pass_as_written(host: str) -> None:
    assert literal_problem(host) is None  # a name is checked when it is resolved


async def test_a_name_is_refused_when_any_address_it_resolves_to_is_private() -> None:
    with pytest.raises(ForbiddenTarget, match=r"hooks\.example\.com resolves to 10\.0\.0\.7"):
        await pin_public("https://hooks.example.com/x", resolving("93.184.216.34", "10.0.0.7"))


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    import socket

    async def failing(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(ForbiddenTarget, match=r"cannot resolve nowhere\.example"):
        await pin_public("http://nowhere.example/x", failing)


async def test_the_request_goes_to_the_checked_address_with_the_name_kept() -> None:
    pinned = await pin_public("https://hooks.example.com:8443/in?x=1", resolving("93.184.216.34"))
    assert str(pinned.url) == "https://93.184.216.34:8443/in?x=1"
    assert pinned.headers == {"host": "hooks.example.com:8443"}
    assert pinned.extensions == {"sni_hostname": "hooks.example.com"}  # TLS checks the name
    # What httpx sends with them: the checked address, the name in the Host header.
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        await client.post(pinned.url, headers=pinned.headers, extensions=pinned.extensions)
    assert seen[0].url.host == "93.184.216.34"
    assert seen[0].headers["host"] == "hooks.example.com:8443"
    assert seen[0].extensions["sni_hostname"] == "hooks.example.com"


async def test_plain_http_on_the_default_port_keeps_a_bare_host() -> None:
    pinned = await pin_public("http://hooks.example.com/in", resolving("2606:4700::1111"))
    assert str(pinned.url) == "http://[2606:4700::1111]/in"
    assert pinned.headers == {"host": "hooks.example.com"} and pinned.extensions == {}
