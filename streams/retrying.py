"""Transient dependency failures (the item store away or overloaded): retry with backoff.

Blocking is the point: the caller's offsets are not committed meanwhile, so nothing is skipped
while Qdrant is away, and the stream resumes where it stopped.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from typing import TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT_ERRORS: tuple[type[BaseException], ...]
try:  # qdrant-client raises these when the server is unreachable or overloaded
    import httpx
    from qdrant_client.http.exceptions import ResponseHandlingException

    TRANSIENT_ERRORS = (
        ResponseHandlingException,
        httpx.TransportError,
        ConnectionError,
        TimeoutError,
    )
except ImportError:  # pragma: no cover
    TRANSIENT_ERRORS = (ConnectionError, TimeoutError)


async def retrying(op: Callable[[], Awaitable[T]], what: str, max_delay_s: float = 30.0) -> T:
    """``op()`` until it works, waiting 0.1 s, 0.2 s, ... (at most ``max_delay_s``, jittered)
    after each transient failure."""
    delay = 0.1
    while True:
        try:
            return await op()
        except TRANSIENT_ERRORS as exc:
            log.warning("%s failed (%s); retrying in %.1f s", what, exc, delay)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, max_delay_s)
