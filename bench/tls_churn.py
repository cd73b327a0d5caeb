"""TLS connection churn: does the server's RSS stay flat over many handshakes?

Runs a bare TLS server (answers one DoT-framed query per connection with a fixed response) in a child process,
then opens and closes HANDSHAKES TLS connections against it in waves of CONCURRENCY, printing the server's RSS after
every WAVE handshakes. ``--loop`` picks uvloop or asyncio; ``--tls`` picks the event loop's own SSL transport
(``loop``) or ztdns's memory-BIO TLS protocol (``bio``, :mod:`ztdns.transport.tlsbio`).

    .venv/bin/python bench/tls_churn.py --loop uvloop --tls loop --handshakes 20000
    .venv/bin/python bench/tls_churn.py --loop uvloop --tls bio --handshakes 20000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import ssl
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from ztdns.pki import init_ca, issue

ANSWER = struct.pack("!H", 12) + b"\x00\x00\x81\x80" + b"\x00" * 8


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class Answerer(asyncio.Protocol):
    greeting = b""  # sent on connection (what an HTTP/2 server's SETTINGS would be), --greeting bytes of it

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        if self.greeting:
            transport.write(self.greeting)

    def data_received(self, data: bytes) -> None:
        self.transport.write(ANSWER)


def serve(loop_name: str, tls: str, pki: Path, port: int, greeting: int) -> None:
    Answerer.greeting = b"x" * greeting
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki / "server.crt", pki / "server.key")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if tls == "loop":
            await loop.create_server(Answerer, "127.0.0.1", port, ssl=context, backlog=1024)
        elif tls == "accepted":  # what TlsStreamListener does: accept, then connect_accepted_socket
            import socket

            listening = socket.create_server(("127.0.0.1", port), backlog=1024)
            listening.setblocking(False)
            tasks = set()
            while True:
                sock, _ = await loop.sock_accept(listening)

                async def handshake(sock: socket.socket) -> None:
                    with contextlib.suppress(OSError, TimeoutError, EOFError, ValueError):
                        await loop.connect_accepted_socket(Answerer, sock, ssl=context, ssl_handshake_timeout=5.0)

                task = loop.create_task(handshake(sock))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
        else:
            from ztdns.transport.tlsbio import TlsBioProtocol

            await loop.create_server(
                lambda: TlsBioProtocol(context, Answerer(), handshake_timeout=5.0), "127.0.0.1", port, backlog=1024
            )
        await asyncio.Event().wait()

    if loop_name == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


async def one(port: int, context: ssl.SSLContext, close: str) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost")
    writer.write(ANSWER)
    if close == "abort":  # a client that leaves without reading or saying goodbye (TCP reset)
        await asyncio.sleep(0.01)
        writer.transport.abort()
        return
    await reader.readexactly(len(ANSWER))
    writer.close()
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        await writer.wait_closed()


async def limited(semaphore: asyncio.Semaphore, port: int, context: ssl.SSLContext, close: str) -> None:
    async with semaphore:
        await one(port, context, close)


async def churn(port: int, pid: int, total: int, concurrency: int, wave: int, ca: Path, close: str) -> list[float]:
    context = ssl.create_default_context(cafile=ca)
    samples = [rss_mb(pid)]
    done = 0
    started = time.monotonic()
    while done < total:
        batch = min(wave, total - done)
        semaphore = asyncio.Semaphore(concurrency)
        results = await asyncio.gather(
            *(limited(semaphore, port, context, close) for _ in range(batch)), return_exceptions=True
        )
        failures = sum(1 for result in results if isinstance(result, BaseException))
        done += batch
        samples.append(rss_mb(pid))
        rate = done / (time.monotonic() - started)
        print(f"{done:>8} handshakes  server RSS {samples[-1]:7.1f} MB  ({rate:.0f}/s, {failures} failed)", flush=True)
    return samples


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--tls", choices=("loop", "accepted", "bio"), default="loop")
    parser.add_argument("--handshakes", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--wave", type=int, default=2_000)
    parser.add_argument("--port", type=int, default=8853)
    parser.add_argument("--greeting", type=int, default=0, help="bytes the server sends on each connection")
    parser.add_argument("--close", choices=("clean", "abort"), default="clean", help="how clients leave")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        pki = Path(tmp)
        init_ca(pki)
        issue(pki, "server", dns_names=("localhost",), usage="server")
        server = multiprocessing.Process(
            target=serve, args=(args.loop, args.tls, pki, args.port, args.greeting), daemon=True
        )
        server.start()
        time.sleep(1.0)
        assert server.pid is not None
        try:
            samples = asyncio.run(
                churn(args.port, server.pid, args.handshakes, args.concurrency, args.wave, pki / "ca.crt", args.close)
            )
        finally:
            server.terminate()
            server.join()
    warm = samples[min(2, len(samples) - 1)]
    print(
        f"{args.loop}/{args.tls}: RSS {samples[0]:.1f} MB at start, {warm:.1f} after warm-up, {samples[-1]:.1f} "
        f"at the end ({(samples[-1] - warm) / warm * 100:+.1f} % after warm-up)"
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
