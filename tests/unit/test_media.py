"""Media fetching rules (encoders.media), against a real HTTP server started by the test on
loopback and real files: SSRF guards, redirects, DNS answers, size and time limits, file roots
and traversal, data: URIs. Every failure must be a MediaError whose message says why.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from recstream.encoders.media import MediaError, MediaFetcher
from recstream.streams.settings import MediaSettings

BODY = b"\x89PNG fake image bytes " * 100
LOOPBACK = ["127.0.0.1/32"]


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


class Server:
    """aiohttp server on 127.0.0.1 with the routes the rules need; records who connected."""

    def __init__(self) -> None:
        self.port = 0
        self.peers: list[str] = []
        self.local_addresses: list[str] = []
        self._runner: web.AppRunner | None = None

    async def start(self) -> Server:
        app = web.Application()
        app.router.add_get("/ok", self.ok)
        app.router.add_get("/big", self.big)
        app.router.add_get("/chunked-big", self.chunked_big)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/missing", self.missing)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/loop", self.loop)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        assert self._runner is not None
        await self._runner.cleanup()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def _seen(self, request: web.Request) -> None:
        self.peers.append(str(request.remote))
        sock = request.transport.get_extra_info("sockname") if request.transport else None
        self.local_addresses.append(sock[0] if sock else "?")

    async def ok(self, request: web.Request) -> web.Response:
        self._seen(request)
        # Connection: close, so every fetch opens (and resolves for) a new connection.
        return web.Response(body=BODY, headers={"Connection": "close"})

    async def big(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(body=b"x" * 5000)

    async def chunked_big(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        resp = web.StreamResponse()  # no Content-Length: the limit must hold while reading
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(10):
            await resp.write(b"y" * 1000)
        await resp.write_eof()
        return resp

    async def slow(self, request: web.Request) -> web.Response:
        self._seen(request)
        await asyncio.sleep(5)
        return web.Response(body=BODY)

    async def missing(self, request: web.Request) -> web.Response:
        return web.Response(status=404, text="no such medium")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def loop(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/loop")


async def with_server(body: Callable[[Server], Awaitable[Any]]) -> Any:
    server = await Server().start()
    try:
        return await body(server)
    finally:
        await server.stop()


def fetcher(**overrides: Any) -> MediaFetcher:
    settings = dict(timeout_s=2.0, connect_timeout_s=1.0, max_bytes=4096)
    settings.update(overrides)
    return MediaFetcher(MediaSettings(**settings))


async def fetch(f: MediaFetcher, uri: str) -> bytes:
    async with f:
        return await f.fetch(uri)


# -- http(s): the happy path and limits ------------------------------------------------------


def test_http_fetch_when_loopback_allowed() -> None:
    async def body(s: Server) -> None:
        assert await fetch(fetcher(allow_private=True), s.url("/ok")) == BODY
        assert await fetch(fetcher(allow_networks=LOOPBACK), s.url("/ok")) == BODY

    run(with_server(body))


def test_http_error_status_is_a_failure() -> None:
    async def body(s: Server) -> None:
        with pytest.raises(MediaError, match="HTTP 404 Not Found"):
            await fetch(fetcher(allow_private=True), s.url("/missing"))

    run(with_server(body))


def test_content_length_over_limit_refused_before_reading() -> None:
    async def body(s: Server) -> None:
        with pytest.raises(MediaError, match=r"5000 bytes \(Content-Length\), over 4096"):
            await fetch(fetcher(allow_private=True), s.url("/big"))

    run(with_server(body))


def test_body_growing_past_limit_is_cut_off() -> None:
    async def body(s: Server) -> None:
        with pytest.raises(MediaError, match="more than 4096 bytes; cut off"):
            await fetch(fetcher(allow_private=True), s.url("/chunked-big"))

    run(with_server(body))


def test_slow_server_times_out() -> None:
    async def body(s: Server) -> None:
        started = asyncio.get_running_loop().time()
        with pytest.raises(MediaError, match=r"timed out after 0\.5 s"):
            await fetch(fetcher(allow_private=True, timeout_s=0.5), s.url("/slow"))
        assert asyncio.get_running_loop().time() - started < 3

    run(with_server(body))


def test_connection_refused_is_a_failure() -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(MediaError, match="cannot connect"):
        run(fetch(fetcher(allow_private=True), f"http://127.0.0.1:{port}/x"))


# -- http(s): SSRF guards ----------------------------------------------------------------------


def test_loopback_literal_refused_by_default() -> None:
    async def body(s: Server) -> None:
        with pytest.raises(MediaError, match="loopback/private"):
            await fetch(fetcher(), s.url("/ok"))
        assert s.peers == []  # refused before any connection

    run(with_server(body))


def test_hostname_resolving_to_loopback_refused() -> None:
    async def body(s: Server) -> None:
        with pytest.raises(MediaError, match="'localhost' resolves to"):
            await fetch(fetcher(), s.url("/ok", host="localhost"))
        assert s.peers == []

    run(with_server(body))


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "0.0.0.0",
        "100.64.0.1",  # carrier-grade NAT
        "224.0.0.1",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",  # IPv4-mapped loopback
        "::ffff:10.0.0.1",
    ],
)
def test_non_global_addresses_refused(address: str) -> None:
    with pytest.raises(MediaError, match="refused"):
        fetcher().check_address(address, "example.test")


@pytest.mark.parametrize("address", ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"])
def test_global_addresses_allowed(address: str) -> None:
    fetcher().check_address(address, "example.test")


def test_allow_networks_is_an_exact_exception() -> None:
    f = fetcher(allow_networks=LOOPBACK)
    f.check_address("127.0.0.1", "h")
    with pytest.raises(MediaError):
        f.check_address("127.0.0.2", "h")


def test_every_resolved_address_is_checked() -> None:
    """One private address among the answers is enough to refuse the host."""

    async def body(s: Server) -> None:
        async def lookup(host: str, port: int) -> list[tuple[int, str]]:
            return [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET, "10.0.0.7")]

        f = MediaFetcher(MediaSettings(allow_networks=LOOPBACK, timeout_s=2), lookup=lookup)
        with pytest.raises(MediaError, match="10.0.0.7"):
            await fetch(f, s.url("/ok", host="media.example.test"))
        assert s.peers == []

    run(with_server(body))


def test_dns_rebinding_connects_only_to_the_checked_address() -> None:
    """The first answer (allowed) is the address connected to; a later, different answer
    (blocked) is checked again on the next connection and refused: no window between check
    and connect."""

    async def body(s: Server) -> None:
        answers = iter(["127.0.0.1", "127.0.0.2"])
        calls: list[str] = []

        async def lookup(host: str, port: int) -> list[tuple[int, str]]:
            ip = next(answers)
            calls.append(ip)
            return [(socket.AF_INET, ip)]

        f = MediaFetcher(MediaSettings(allow_networks=LOOPBACK, timeout_s=2), lookup=lookup)
        async with f:
            assert await f.fetch(s.url("/ok", host="cdn.example.test")) == BODY
            with pytest.raises(MediaError, match="127.0.0.2"):
                await f.fetch(s.url("/ok", host="cdn.example.test"))
        assert calls == ["127.0.0.1", "127.0.0.2"]  # one resolution per connection
        assert s.local_addresses == ["127.0.0.1"]  # and it went where the check said

    run(with_server(body))


def test_redirect_to_blocked_address_refused() -> None:
    async def body(s: Server) -> None:
        target = f"http://127.0.0.2:{s.port}/ok"  # loopback, but not in allow_networks
        with pytest.raises(MediaError, match="127.0.0.2"):
            await fetch(fetcher(allow_networks=LOOPBACK), s.url(f"/redirect?to={target}"))
        assert s.peers == []  # the redirect target was never contacted

    run(with_server(body))


def test_redirect_followed_when_allowed() -> None:
    async def body(s: Server) -> None:
        got = await fetch(fetcher(allow_networks=LOOPBACK), s.url(f"/redirect?to={s.url('/ok')}"))
        assert got == BODY

    run(with_server(body))


def test_redirect_to_file_scheme_refused() -> None:
    async def body(s: Server) -> None:
        with pytest.raises(MediaError, match="non-HTTP"):
            await fetch(fetcher(allow_private=True), s.url("/redirect?to=file:///etc/passwd"))

    run(with_server(body))


def test_redirect_loop_stops() -> None:
    async def body(s: Server) -> None:
        with pytest.raises(MediaError, match="redirected more than 2 times"):
            await fetch(fetcher(allow_private=True, max_redirects=2), s.url("/loop"))

    run(with_server(body))


def test_environment_proxy_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9/")  # would fail if used

    async def body(s: Server) -> None:
        assert await fetch(fetcher(allow_private=True), s.url("/ok")) == BODY

    run(with_server(body))


# -- file:// ---------------------------------------------------------------------------------


@pytest.fixture
def media_root(tmp_path: Path) -> Path:
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "a b.jpg").write_bytes(BODY)
    (root / "large.bin").write_bytes(b"z" * 5000)
    (tmp_path / "secret.txt").write_text("outside the root")
    os.symlink(tmp_path / "secret.txt", root / "link-out.txt")
    os.symlink(root / "sub" / "a b.jpg", root / "link-in.jpg")
    return root


def test_file_inside_root(media_root: Path) -> None:
    f = fetcher(file_roots=[media_root])
    assert run(fetch(f, (media_root / "sub" / "a b.jpg").as_uri())) == BODY
    assert (
        run(fetch(fetcher(file_roots=[media_root]), (media_root / "link-in.jpg").as_uri())) == BODY
    )


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("{root}/../secret.txt", "outside the configured media roots"),
        ("{root}/sub/../../secret.txt", "outside the configured media roots"),
        ("{root}/%2e%2e/secret.txt", "outside the configured media roots"),
        ("{root}/link-out.txt", "outside the configured media roots"),
        ("/etc/passwd", "outside the configured media roots"),
        ("{root}/nothing.jpg", "does not exist"),
        ("{root}/sub", "is a directory"),
        ("{root}/large.bin", "5000 bytes, over 4096"),
    ],
)
def test_file_rules(media_root: Path, path: str, reason: str) -> None:
    uri = "file://" + path.format(root=media_root)
    with pytest.raises(MediaError, match=reason):
        run(fetch(fetcher(file_roots=[media_root]), uri))


def test_file_refused_without_roots(media_root: Path) -> None:
    with pytest.raises(MediaError, match="no media roots are configured"):
        run(fetch(fetcher(), (media_root / "sub" / "a b.jpg").as_uri()))


def test_file_with_remote_host_refused(media_root: Path) -> None:
    with pytest.raises(MediaError, match="remote host"):
        run(fetch(fetcher(file_roots=[media_root]), "file://fileserver/share/a.jpg"))


# -- data: and other schemes -----------------------------------------------------------------


def test_data_uri_base64_and_percent() -> None:
    payload = base64.b64encode(BODY).decode()
    assert run(fetch(fetcher(), f"data:image/png;base64,{payload}")) == BODY
    assert run(fetch(fetcher(), "data:text/plain,hello%20world")) == b"hello world"


@pytest.mark.parametrize(
    ("uri", "reason"),
    [
        ("data:image/png;base64,@@not base64@@", "invalid base64"),
        ("data:image/png;base64", "no comma"),
        (
            "data:application/octet-stream;base64," + base64.b64encode(b"q" * 3000).decode(),
            "inline limit",
        ),
        ("ftp://example.com/a.jpg", "unsupported media URI scheme 'ftp'"),
        ("gopher://example.com/", "unsupported"),
        ("just-a-name.jpg", "unsupported"),
        ("", "empty media URI"),
    ],
)
def test_bad_uris(uri: str, reason: str) -> None:
    with pytest.raises(MediaError, match=reason):
        run(fetch(fetcher(data_max_bytes=2048), uri))


def test_error_messages_do_not_echo_inline_payloads() -> None:
    uri = "data:image/png;base64," + "A" * 10_000 + "!"
    with pytest.raises(MediaError) as info:
        run(fetch(fetcher(), uri))
    assert len(str(info.value)) < 300
