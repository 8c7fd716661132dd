"""One webhook attempt over HTTP: check the target, sign, POST, classify the answer.

The SSRF guard runs on every attempt: the URL is checked, the host resolved once,
every address checked, and the connection made to the checked address (Host header
and TLS SNI carry the name, so certificates are still verified against it).
Redirects are not followed; the response body is never read.

    2xx -> delivered     410 -> gone (the endpoint is disabled)
    refused address / bad URL -> refused (dead letter, no retry)
    anything else (3xx, 4xx, 5xx, timeout, connection or DNS error) -> retry
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

import httpx

from schemas.records import WebhookDelivery
from workers.callbacks.signing import sign_headers
from workers.callbacks.ssrf import AddressRefused, Network, check_url, pick_address

USER_AGENT: Final = "Tollway-Webhooks/1"
Resolver = Callable[[str, int], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["delivered", "gone", "refused", "retry"]
    detail: str


async def system_resolve(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


class Sender:
    def __init__(
        self,
        client: httpx.AsyncClient,
        *,
        allow: Sequence[Network] = (),
        allow_http: bool = False,
        timeout_s: float = 10.0,
        resolve: Resolver = system_resolve,
    ) -> None:
        self.client = client
        self.allow = tuple(allow)
        self.allow_http = allow_http
        self.timeout_s = timeout_s
        self.resolve = resolve

    async def send(self, delivery: WebhookDelivery, keys: list[bytes], now_s: int) -> Outcome:
        try:
            target = check_url(delivery["url"], allow_http=self.allow_http, allow=self.allow)
            address = target.literal
            if address is None:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        resolved = await self.resolve(target.host, target.port)
                except (OSError, TimeoutError) as exc:
                    return Outcome("retry", f"DNS lookup failed ({type(exc).__name__})")
                address = pick_address(resolved, self.allow)
        except AddressRefused as exc:
            return Outcome("refused", str(exc))
        headers = sign_headers(keys, delivery["webhook_id"], now_s, delivery["payload"])
        headers["content-type"] = "application/json"
        headers["user-agent"] = USER_AGENT
        url = httpx.URL(delivery["url"])
        headers["host"] = url.netloc.decode("ascii")
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            async with self.client.stream(
                "POST",
                url.copy_with(host=str(address)),
                content=delivery["payload"],
                headers=headers,
                extensions=extensions,
                follow_redirects=False,
                timeout=self.timeout_s,
            ) as response:
                status = response.status_code
        except httpx.HTTPError as exc:
            return Outcome("retry", f"{type(exc).__name__} calling the endpoint")
        return classify(status)


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome("delivered", f"HTTP {status}")
    if status == 410:
        return Outcome("gone", "HTTP 410 Gone: the endpoint is disabled")
    if 300 <= status < 400:
        return Outcome("retry", f"HTTP {status} (redirects are not followed)")
    return Outcome("retry", f"HTTP {status}")
