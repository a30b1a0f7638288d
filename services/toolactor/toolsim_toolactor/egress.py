"""Outbound calls to ``live_endpoints``: only where the operator allows, and bounded.

A live endpoint is a URL a caller wrote, and the ToolActor usually sits inside a network the
caller cannot reach (Redis, the LLM server, a cloud metadata service). So a request leaves
only when

- its host is on the operator's allowlist (``TOOLSIM_LIVE_HOSTS``; ``*.example.com`` matches
  subdomains), checked when the toolset is registered and again on every call;
- every address the host resolves to is public, or inside a network the operator named
  (``TOOLSIM_LIVE_ALLOWED_NETWORKS``): loopback, private, link-local, carrier-grade NAT and
  metadata addresses are refused otherwise. The request then goes to the address that was
  checked (``Host`` and TLS server name stay the host's), so a second DNS answer cannot
  point it elsewhere;

and the answer is bounded: no redirect followed, one deadline for the whole exchange, at most
``max_response_bytes`` read. Upstream bodies are never echoed to the caller (an error page may
hold anything); the status code is.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Sequence
from typing import Any

import httpx
import orjson

from toolsim.errors import InvalidToolDefinitionError, LiveToolError

log = logging.getLogger(__name__)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def refused_address(address: IPAddress, allowed: Sequence[IPNetwork]) -> bool:
    """Whether a request may not go to ``address``: anything not globally routable (loopback,
    private, link-local and so metadata, shared, reserved) or multicast, unless an operator's
    network holds it. An IPv4-mapped IPv6 address is judged as the IPv4 address it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if any(address.version == net.version and address in net for net in allowed):
        return False
    return not address.is_global or address.is_multicast


def host_allowed(host: str, patterns: Sequence[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


class Egress:
    """POSTs JSON to allowed live endpoints and returns their JSON object, as bytes."""

    def __init__(
        self,
        *,
        hosts: Sequence[str],
        allowed_networks: Sequence[IPNetwork],
        max_response_bytes: int,
        timeout_s: float,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._hosts = list(hosts)
        self._networks = list(allowed_networks)
        self._max_bytes = max_response_bytes
        self._timeout_s = timeout_s
        # No proxies from the environment (they would see the request, not us), no redirects.
        self._client = httpx.AsyncClient(
            timeout=timeout_s, transport=transport, trust_env=False, follow_redirects=False
        )

    def check(self, name: str, url: str) -> None:
        """Refuse an endpoint this server would not call; raises ``InvalidToolDefinitionError``."""
        param = f"live_endpoints.{name}"
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise InvalidToolDefinitionError("not a valid URL", param=param) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidToolDefinitionError("a live endpoint is an http(s) URL", param=param)
        if parsed.userinfo:
            raise InvalidToolDefinitionError("a live endpoint carries no credentials", param=param)
        if not self._hosts:
            raise InvalidToolDefinitionError(
                "live endpoints are off on this server: the operator allows hosts with "
                "TOOLSIM_LIVE_HOSTS='[\"api.example.com\"]'",
                param=param,
            )
        if not host_allowed(parsed.host, self._hosts):
            raise InvalidToolDefinitionError(
                f"host {parsed.host!r} is not one this server calls (TOOLSIM_LIVE_HOSTS)",
                param=param,
            )

    async def post_json(self, name: str, url: str, arguments: dict[str, Any]) -> bytes:
        self.check(name, url)
        try:
            async with asyncio.timeout(self._timeout_s):
                return await self._post(name, httpx.URL(url), arguments)
        except TimeoutError as exc:
            raise LiveToolError(
                f"live tool {name!r} did not answer within {self._timeout_s:g} s"
            ) from exc

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, name: str, url: httpx.URL, arguments: dict[str, Any]) -> bytes:
        address = await self._address(name, url)
        headers = {"host": url.netloc.decode("ascii"), "content-type": "application/json"}
        extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
        pinned = url.copy_with(host=address)
        try:
            async with self._client.stream(
                "POST",
                pinned,
                content=orjson.dumps(arguments),
                headers=headers,
                extensions=extensions,
            ) as response:
                if response.status_code != 200:
                    raise LiveToolError(f"live tool {name!r} answered {response.status_code}")
                body = await self._read(name, response)
        except httpx.HTTPError as exc:
            # the exception text may name the pinned address: keep it in the log only
            log.warning("live tool %r at %s failed: %r", name, url, exc)
            raise LiveToolError(
                f"live tool {name!r} could not be reached ({type(exc).__name__})"
            ) from exc
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise LiveToolError(f"live tool {name!r} answered non-JSON") from exc
        if not isinstance(value, dict):
            raise LiveToolError(f"live tool {name!r} answered JSON that is not an object")
        return orjson.dumps(value)

    async def _address(self, name: str, url: httpx.URL) -> str:
        """The one checked address to connect to; every address of the host must pass."""
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                url.host, port, type=socket.SOCK_STREAM
            )
        except OSError as exc:
            raise LiveToolError(f"live tool {name!r}: host {url.host!r} does not resolve") from exc
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]
        if not addresses or any(refused_address(a, self._networks) for a in addresses):
            raise LiveToolError(
                f"live tool {name!r}: host {url.host!r} resolves to an address this server does "
                "not call (loopback, private, link-local or metadata; the operator allows "
                "networks with TOOLSIM_LIVE_ALLOWED_NETWORKS)"
            )
        return str(addresses[0])

    async def _read(self, name: str, response: httpx.Response) -> bytes:
        declared = response.headers.get("content-length")
        too_big = LiveToolError(f"live tool {name!r} answered more than {self._max_bytes} bytes")
        if declared is not None and declared.isdigit() and int(declared) > self._max_bytes:
            raise too_big
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self._max_bytes:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)
