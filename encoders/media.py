"""Fetching the media a content item references: ``file://``, ``http(s)://`` and ``data:``.

The rules (``MediaSettings``, env ``RECSTREAM_MEDIA_*``), each failure a ``MediaError`` whose
message is one sentence naming the URI and the reason:

- ``file://`` only for paths inside one of ``file_roots`` after resolving ``..`` and symlinks
  (no roots configured: no local files at all); at most ``max_bytes``.
- ``http(s)://``: at most ``max_bytes`` (a larger Content-Length fails before the body is
  read; a body that grows past it is cut off and fails), ``timeout_s`` for the whole fetch and
  ``connect_timeout_s`` to connect. Unless ``allow_private``, a host that resolves to any
  loopback, private, link-local, multicast, reserved or unspecified address is refused (every
  address it resolves to is checked, IPv4-mapped IPv6 included), except for networks listed in
  ``allow_networks``. The connection goes to the address that was checked (our resolver hands
  aiohttp the checked list, so a DNS answer that changes between check and connect, "DNS
  rebinding", cannot slip through), redirects are followed by hand (at most ``max_redirects``)
  and every hop is checked again, and environment proxies are ignored.
- ``data:`` URIs (base64 or percent-encoded) up to ``data_max_bytes`` decoded.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import unquote, unquote_to_bytes, urljoin, urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from recstream.encoders.settings import MediaSettings

# getaddrinfo-shaped resolver: (host, port) -> list of (family, address) pairs. Injected by
# tests to play DNS answers; the default asks the system resolver.
Lookup = Callable[[str, int], Awaitable[list[tuple[int, str]]]]
_REDIRECTS = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024


class MediaError(Exception):
    """A medium could not be fetched; ``str(exc)`` is a sentence saying which and why."""


def shorten(uri: str, limit: int = 120) -> str:
    """A URI for a log line or an error: data URIs lose their payload, long ones their tail."""
    if uri.startswith("data:"):
        return uri.split(",", 1)[0][:60] + ",..."
    return uri if len(uri) <= limit else uri[: limit - 3] + "..."


class MediaFetcher:
    """Fetch media bytes by URI under ``MediaSettings``' rules. Use as ``async with``, or call
    ``close()``; one instance per worker (it pools HTTP connections)."""

    def __init__(self, settings: MediaSettings, lookup: Lookup | None = None) -> None:
        self.settings = settings
        self._roots = [Path(os.path.realpath(Path(r).expanduser())) for r in settings.file_roots]
        self._allowed = [ipaddress.ip_network(n, strict=False) for n in settings.allow_networks]
        self._lookup = lookup or _system_lookup
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> MediaFetcher:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def fetch(self, uri: str) -> bytes:
        """The bytes ``uri`` points at; raises MediaError with the reason."""
        if not isinstance(uri, str) or not uri.strip():
            raise MediaError("empty media URI")
        uri = uri.strip()
        scheme = uri.split(":", 1)[0].lower() if ":" in uri else ""
        if scheme == "data":
            return self._data(uri)
        if scheme == "file":
            return await asyncio.to_thread(self._file, uri)
        if scheme in ("http", "https"):
            return await self._http(uri)
        raise MediaError(
            f"unsupported media URI scheme {scheme or '(none)'!r} in {shorten(uri)}; "
            "use http(s)://, file:// or data:"
        )

    # -- data: -------------------------------------------------------------------------------

    def _data(self, uri: str) -> bytes:
        head, sep, payload = uri[5:].partition(",")
        if not sep:
            raise MediaError(f"malformed data URI {shorten(uri)}: no comma before the data")
        limit = self.settings.data_max_bytes
        # base64 grows data by 4/3: refuse before decoding anything oversized.
        if len(payload) > limit * 4 // 3 + 8 and head.endswith(";base64"):
            raise MediaError(f"data URI {shorten(uri)} is over the {limit}-byte inline limit")
        try:
            if head.endswith(";base64"):
                data = base64.b64decode(unquote(payload), validate=True)
            else:
                data = unquote_to_bytes(payload)
        except (binascii.Error, ValueError) as exc:
            raise MediaError(f"data URI {shorten(uri)} has invalid base64: {exc}") from exc
        if len(data) > limit:
            raise MediaError(f"data URI {shorten(uri)} is over the {limit}-byte inline limit")
        return data

    # -- file:// -----------------------------------------------------------------------------

    def _file(self, uri: str) -> bytes:
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise MediaError(f"file URI {shorten(uri)} names a remote host {parts.netloc!r}")
        raw = unquote(parts.path)
        if "\x00" in raw or not raw.startswith("/"):
            raise MediaError(f"file URI {shorten(uri)} is not an absolute path")
        if not self._roots:
            raise MediaError(
                f"file URI {shorten(uri)} refused: no media roots are configured "
                "(RECSTREAM_MEDIA_FILE_ROOTS)"
            )
        # realpath resolves "..", "." and every symlink: the check is on where the bytes are.
        real = Path(os.path.realpath(raw))
        if not any(real == root or real.is_relative_to(root) for root in self._roots):
            raise MediaError(f"file URI {shorten(uri)} is outside the configured media roots")
        limit = self.settings.max_bytes
        try:
            with open(real, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size > limit:
                    raise MediaError(f"file {shorten(uri)} is {size} bytes, over {limit}")
                data = handle.read(limit + 1)
        except IsADirectoryError as exc:
            raise MediaError(f"file URI {shorten(uri)} is a directory") from exc
        except FileNotFoundError as exc:
            raise MediaError(f"file {shorten(uri)} does not exist") from exc
        except OSError as exc:
            raise MediaError(f"file {shorten(uri)} cannot be read: {exc.strerror}") from exc
        if len(data) > limit:  # grew between stat and read
            raise MediaError(f"file {shorten(uri)} is over {limit} bytes")
        return data

    # -- http(s):// --------------------------------------------------------------------------

    def check_address(self, ip: str, host: str) -> None:
        """Raise MediaError when ``ip`` (an address ``host`` resolved to) may not be fetched."""
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if self.settings.allow_private or any(addr in net for net in self._allowed):
            return
        if not addr.is_global or addr.is_multicast or addr.is_reserved:
            raise MediaError(
                f"host {host!r} resolves to {addr}, a loopback/private/link-local/reserved "
                "address; refused (RECSTREAM_MEDIA_ALLOW_PRIVATE or _ALLOW_NETWORKS to allow)"
            )

    def _client(self) -> aiohttp.ClientSession:
        # A session belongs to the event loop it was made on; a fetcher reused from another
        # loop (tests, scripts calling asyncio.run repeatedly) gets a fresh one.
        if self._session is not None and getattr(self._session, "_loop", None) is not (
            asyncio.get_running_loop()
        ):
            self._session = None
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=_CheckingResolver(self),
                use_dns_cache=False,  # every new connection resolves (and is checked) again
                limit=self.settings.concurrency,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,  # a proxy from the environment would resolve hosts itself
                headers={"User-Agent": self.settings.user_agent},
                auto_decompress=False,  # the size limit is on bytes received
            )
        return self._session

    async def _http(self, uri: str) -> bytes:
        s = self.settings
        timeout = aiohttp.ClientTimeout(total=s.timeout_s, connect=s.connect_timeout_s)
        url = uri
        try:
            async with asyncio.timeout(s.timeout_s):
                for _hop in range(s.max_redirects + 1):
                    self._check_literal(url)
                    async with self._client().get(
                        url, allow_redirects=False, timeout=timeout
                    ) as resp:
                        if resp.status in _REDIRECTS:
                            location = resp.headers.get("Location")
                            if not location:
                                raise MediaError(
                                    f"HTTP {resp.status} without Location from {shorten(url)}"
                                )
                            url = urljoin(url, location)
                            if urlsplit(url).scheme not in ("http", "https"):
                                raise MediaError(f"{shorten(uri)} redirects to a non-HTTP URI")
                            continue
                        if resp.status >= 400:
                            raise MediaError(
                                f"HTTP {resp.status} {resp.reason} from {shorten(url)}"
                            )
                        return await self._body(resp, url)
                raise MediaError(f"{shorten(uri)} redirected more than {s.max_redirects} times")
        except TimeoutError as exc:
            raise MediaError(f"timed out after {s.timeout_s:g} s fetching {shorten(uri)}") from exc
        except aiohttp.ClientConnectorError as exc:
            cause = exc.os_error if isinstance(exc.os_error, _Refused) else None
            if cause is not None:
                raise MediaError(f"{shorten(url)} refused: {cause}") from exc
            raise MediaError(f"cannot connect for {shorten(url)}: {exc.os_error}") from exc
        except aiohttp.InvalidURL as exc:
            raise MediaError(f"invalid URL {shorten(uri)}") from exc
        except aiohttp.ClientError as exc:
            raise MediaError(
                f"fetching {shorten(url)} failed: {type(exc).__name__}: {exc}"
            ) from exc

    def _check_literal(self, url: str) -> None:
        # aiohttp does not call the resolver for IP literals: check them here.
        host = urlsplit(url).hostname
        if not host:
            raise MediaError(f"URL {shorten(url)} has no host")
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return
        self.check_address(host, host)

    async def _body(self, resp: aiohttp.ClientResponse, url: str) -> bytes:
        limit = self.settings.max_bytes
        if resp.content_length is not None and resp.content_length > limit:
            raise MediaError(
                f"{shorten(url)} is {resp.content_length} bytes (Content-Length), over {limit}"
            )
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(_CHUNK):
            size += len(chunk)
            if size > limit:
                raise MediaError(f"{shorten(url)} sent more than {limit} bytes; cut off")
            chunks.append(chunk)
        return b"".join(chunks)


class _Refused(OSError):
    """Raised inside the resolver so aiohttp wraps it; unwrapped into a MediaError."""


class _CheckingResolver(AbstractResolver):
    """Resolves a host, checks every address, and returns exactly the checked addresses, which
    are the ones aiohttp then connects to."""

    def __init__(self, fetcher: MediaFetcher) -> None:
        self._fetcher = fetcher

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        try:
            answers = await self._fetcher._lookup(host, port)
        except OSError as exc:
            raise OSError(f"cannot resolve host {host!r}: {exc}") from exc
        if not answers:
            raise OSError(f"host {host!r} has no address")
        for _fam, ip in answers:
            try:
                self._fetcher.check_address(ip, host)
            except MediaError as exc:
                raise _Refused(str(exc)) from exc
        return [
            {"hostname": host, "host": ip, "port": port, "family": fam, "proto": 0, "flags": 0}
            for fam, ip in answers
        ]

    async def close(self) -> None:
        return None


async def _system_lookup(host: str, port: int) -> list[tuple[int, str]]:
    infos: list[Any] = await asyncio.get_running_loop().getaddrinfo(
        host, port, type=socket.SOCK_STREAM
    )
    seen: dict[str, int] = {}
    for family, _type, _proto, _canon, sockaddr in infos:
        seen.setdefault(str(sockaddr[0]), int(family))
    return [(family, ip) for ip, family in seen.items()]
