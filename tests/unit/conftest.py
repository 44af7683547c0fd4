"""Unit-test fixtures.

aioresponses 0.7.x builds `ClientResponse` without the `stream_writer` argument that aiohttp
3.14 made required (pnuckowski/aioresponses#289, open). aiohttp 3.14 is a security release, so
rather than pin aiohttp down we give aioresponses a response class with that argument defaulted.
"""

from __future__ import annotations

from typing import Any

import aioresponses.core
from aiohttp import ClientResponse


class _NoUpload:
    output_size = 0  # the mocked request body was never written anywhere


class _CompatResponse(ClientResponse):
    def __init__(self, *args: Any, stream_writer: Any = None, **kwargs: Any) -> None:
        try:
            super().__init__(*args, stream_writer=stream_writer or _NoUpload(), **kwargs)
        except TypeError:  # aiohttp < 3.14 has no such argument
            super().__init__(*args, **kwargs)


aioresponses.core.ClientResponse = _CompatResponse  # type: ignore[misc]
