#!/usr/bin/env python3
"""A TCP proxy that adds latency, to benchmark readers against object storage.

A local S3-compatible server (moto) answers in well under a millisecond, which
hides what matters on real object storage: every request pays a round trip.
``DelayProxy`` sits in front of such a server and holds each chunk travelling
client->server for ``delay_s`` before forwarding it, so every HTTP request pays
about ``delay_s``. Connections are delayed independently and concurrently, so a
reader that keeps many requests in flight hides the latency, as it would on S3.
A request whose body waits for a reply pays it twice (boto3's PutObject sends
``Expect: 100-continue``), again as on S3.

    python experiments/delay_proxy.py --target=127.0.0.1:9000 --delay_ms=20

Standard library only (asyncio, in a daemon thread when used as a context
manager).
"""

import argparse
import asyncio
import contextlib
import threading
import time
from types import TracebackType

_CHUNK_BYTES = 64 * 1024
_QUEUED_CHUNKS = 64  # Per connection: bounds buffering (back-pressure beyond).
_EOF = b""


class DelayProxy:
    """Forwards 127.0.0.1:``port`` to ``target_host:target_port``, delaying requests.

    Use as a context manager::

        with DelayProxy("127.0.0.1", 9000, delay_s=0.02) as proxy:
            client = boto3.client("s3", endpoint_url=proxy.url, ...)

    Attributes:
        port: The local port the proxy listens on (chosen free on entry).
        url: ``http://127.0.0.1:<port>``.
    """

    def __init__(self, target_host: str, target_port: int, delay_s: float):
        if delay_s < 0:
            raise ValueError(f"delay_s must be >= 0, got {delay_s}.")
        self.target_host = target_host
        self.target_port = target_port
        self.delay_s = delay_s
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> "DelayProxy":
        self._ready.clear()
        self._error = None
        self._thread = threading.Thread(target=self._run, name="DelayProxy", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(self, exc_type: type[BaseException] | None,
                 exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Stops listening, drops open connections, stops the loop, joins the thread."""
        if self._thread is None:
            return
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join()
        self._thread = None

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # pylint: disable=broad-except
            self._error = e
        finally:
            self._ready.set()  # Unblocks __enter__ if startup failed.

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        async with server:
            await self._stop.wait()
            server.close()
            for task in list(self._connections):
                task.cancel()
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        """Serves one client connection, tracked so that shutdown can cancel it."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await self._forward(client_reader, client_writer)
        except asyncio.CancelledError:
            pass  # Shutdown. (3.11's start_server would log a cancelled handler.)
        finally:
            self._connections.discard(task)

    async def _forward(self, client_reader: asyncio.StreamReader,
                       client_writer: asyncio.StreamWriter) -> None:
        """Forwards both ways until both directions are done, then closes both."""
        server_writer = None
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port)
            queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(_QUEUED_CHUNKS)
            async with asyncio.TaskGroup() as group:
                group.create_task(_read_stamped(client_reader, queue, self.delay_s))
                group.create_task(_write_when_due(queue, server_writer))
                group.create_task(_pipe(server_reader, client_writer))
        except* OSError:
            pass  # A peer reset or refused: drop the connection, as TCP would.
        finally:
            for writer in (client_writer, server_writer):
                if writer is not None:
                    await _close(writer)


async def _read_stamped(reader: asyncio.StreamReader,
                        queue: asyncio.Queue[tuple[float, bytes]],
                        delay_s: float) -> None:
    """Queues each chunk read (then EOF) with the loop time it is due to leave."""
    loop = asyncio.get_running_loop()
    while True:
        chunk = await reader.read(_CHUNK_BYTES)
        await queue.put((loop.time() + delay_s, chunk))
        if chunk == _EOF:
            return


async def _write_when_due(queue: asyncio.Queue[tuple[float, bytes]],
                          writer: asyncio.StreamWriter) -> None:
    """Writes queued chunks in order, each no earlier than its due time."""
    loop = asyncio.get_running_loop()
    while True:
        due, chunk = await queue.get()
        await asyncio.sleep(max(0.0, due - loop.time()))
        if chunk == _EOF:
            _write_eof(writer)
            return
        writer.write(chunk)
        await writer.drain()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copies ``reader`` to ``writer`` undelayed, then half-closes ``writer``."""
    while chunk := await reader.read(_CHUNK_BYTES):
        writer.write(chunk)
        await writer.drain()
    _write_eof(writer)


def _write_eof(writer: asyncio.StreamWriter) -> None:
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _parse_target(target: str) -> tuple[str, int]:
    host, sep, port = target.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {target!r}")
    return host, int(port)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=_parse_target, required=True,
                        help="HOST:PORT of the server to forward to.")
    parser.add_argument("--delay_ms", type=float, default=20.0,
                        help="Delay added to each chunk sent to the target, in ms.")
    args = parser.parse_args()
    host, port = args.target
    with DelayProxy(host, port, args.delay_ms / 1000) as proxy:
        print(f"{proxy.url} -> {host}:{port}, +{args.delay_ms:g} ms per request "
              "(Ctrl-C to stop)", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while True:
                time.sleep(3600)


if __name__ == "__main__":
    main()
