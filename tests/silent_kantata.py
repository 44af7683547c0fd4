"""A loopback "Kantata" that accepts connections and reads requests but never answers (a
hung server or a proxy in front of a dead backend): what `kantata.Silence` gives up on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field


@dataclass
class SilentKantata:
    """`url` is the base URL (…/api/v1); `lines` are the request lines received, in order."""

    url: str = ""
    lines: list[str] = field(default_factory=list)
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        try:
            while line := await reader.readline():
                if line.split(b" ", 1)[0] in (b"GET", b"POST", b"PUT", b"DELETE"):
                    self.lines.append(line.decode("latin-1").strip())
        except ConnectionError:
            pass

    @property
    def requests(self) -> int:
        return len(self.lines)


@asynccontextmanager
async def silent_kantata() -> AsyncIterator[SilentKantata]:
    """Serve a `SilentKantata` on 127.0.0.1 (a free port) while the block runs."""
    sk = SilentKantata()
    server = await asyncio.start_server(sk._handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sk.url = f"http://127.0.0.1:{port}/api/v1"
    try:
        yield sk
    finally:
        server.close()
        for w in sk._writers:
            w.close()
        await server.wait_closed()


#: Settings that make a silent Kantata quick to give up on (a 0.3 s request timeout, the
#: default retries, short back-offs), as SYNCD_* variables.
QUICK_GIVE_UP = {"SYNCD_MAX_RETRIES": "6", "SYNCD_REQUEST_TIMEOUT": "0.3",
                 "SYNCD_BACKOFF_BASE": "0.01", "SYNCD_BACKOFF_CAP": "0.02"}


def gave_up_line(url: str, timeout: str = "0.3") -> str:
    """The one line a command ends with when Kantata at `url` answered nothing."""
    return (f"syncd: KantataUnreachable: Kantata at {url} accepted connections but answered "
            f"none of the last 3 requests within SYNCD_REQUEST_TIMEOUT ({timeout} s), the last: "
            "GET /time_entries timed out: TimeoutError; check SYNCD_KANTATA_BASE_URL and "
            "Kantata's status")
