"""A TCP relay a test can cut: a dependency's outage, seen from the gateway, on real sockets.

The gateway connects to the relay's port; the relay forwards to the real
server (PostgreSQL, Redis). ``cut()`` closes every connection and stops
accepting, as a server that went away; ``stall()`` closes every connection
but keeps accepting new ones and never answers on them, as a server that
hangs (a frozen host, a dropped route); ``restore()`` forwards again.
"""

from __future__ import annotations

import asyncio
import contextlib


class TcpRelay:
    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.port = port
        self.target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stalled = False

    async def restore(self) -> None:
        self._stalled = False
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._drop_all()

    async def stall(self, *, keep_open: bool = False) -> None:
        """Accept connections but pass nothing on: a client waits for an answer that never comes.

        ``keep_open`` leaves the open connections up, passing nothing either, so a
        client's pooled connection hangs mid-statement instead of failing at once.
        """
        self._stalled = True
        if not keep_open:
            self._drop_all()
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    def _drop_all(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._stalled:
            self._writers.add(writer)
            # what the client sends is read and dropped until it hangs up
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while await reader.read(65536):
                    pass
            self._writers.discard(writer)
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    if self._stalled:
                        continue
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._writers.difference_update((writer, up_writer))
