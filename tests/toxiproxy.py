"""Toxiproxy (Shopify's TCP fault proxy) for the network fault tests: the server, its toxics.

The binary is ``$TOXIPROXY`` (the Makefile builds the pinned version with Go into
``~/.cache/hoopai-relay/toxiproxy-<version>/`` and exports the path), else
``toxiproxy-server`` on PATH. Its HTTP API listens on 127.0.0.1 at ``21474`` plus
``HOOPAI_KAFKA_PORT_OFFSET``, like every port of ``dev/localkafka.py``. One proxy per
broker of the ``netfault`` cluster, named ``broker-<id>``, forwards the broker's advertised
port to its real one; a test adds toxics to a proxy by name and removes them by name.

Standard library only (urllib): the API is four calls, and a helper this small should not
pull an HTTP client into the session fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import localkafka

API_PORT = 21474
START_TIMEOUT_S = 20.0
#: every API call is local and small: more than this is a hung server, not a slow one
CALL_TIMEOUT_S = 10.0
#: the directions of a proxy's traffic, as Toxiproxy names them
UPSTREAM, DOWNSTREAM = "upstream", "downstream"
BOTH = (UPSTREAM, DOWNSTREAM)


class ToxiproxyError(RuntimeError):
    """The server could not be started, or refused a call."""


def binary() -> str:
    """The server executable: ``$TOXIPROXY``, else ``toxiproxy-server`` on PATH."""
    name = os.environ.get("TOXIPROXY") or "toxiproxy-server"
    found = shutil.which(name)
    if found is None:
        raise ToxiproxyError(f"toxiproxy not found (TOXIPROXY={name!r}): run `make toxiproxy`")
    return found


def proxy_name(node: localkafka.Node) -> str:
    """The proxy in front of one broker."""
    return f"broker-{node.node_id}"


@dataclass
class Toxiproxy:
    """A running server and the calls of its HTTP API that the tests use."""

    api: str
    proc: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(cls, log: Path, port: int | None = None) -> Toxiproxy:
        """Start the server on 127.0.0.1 and wait until its API answers."""
        port = port if port is not None else API_PORT + localkafka.port_offset()
        api = f"http://127.0.0.1:{port}"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [binary(), "-host", "127.0.0.1", "-port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in pytest reaches the fixture, not the server
            )
        server = cls(api, proc, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            with contextlib.suppress(OSError, ToxiproxyError):
                server.call("GET", "/version")
                return server
            if proc.poll() is not None or time.monotonic() > deadline:
                server.stop()
                raise ToxiproxyError(f"toxiproxy did not start on {api}:\n{localkafka.tail(log)}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server (this process started it)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; the decoded JSON answer (None for an empty one)."""
        data = None if body is None else json.dumps(body).encode()
        # S310 (both): the URL is the http://127.0.0.1:<port> start() built, never a caller's.
        request = urllib.request.Request(self.api + path, data=data, method=method)  # noqa: S310
        request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=CALL_TIMEOUT_S) as response:  # noqa: S310
                text = response.read().decode()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None
        return json.loads(text) if text.strip() else None

    def create_proxy(self, name: str, listen_port: int, upstream_port: int) -> None:
        """A proxy from 127.0.0.1:listen_port to 127.0.0.1:upstream_port (replaced if there)."""
        with contextlib.suppress(ToxiproxyError):
            self.call("DELETE", f"/proxies/{name}")
        self.call(
            "POST",
            "/proxies",
            {
                "name": name,
                "listen": f"127.0.0.1:{listen_port}",
                "upstream": f"127.0.0.1:{upstream_port}",
                "enabled": True,
            },
        )

    def add(
        self,
        proxy: str,
        name: str,
        kind: str,
        stream: str = DOWNSTREAM,
        toxicity: float = 1.0,
        **attributes: int | float,
    ) -> None:
        """Add the toxic ``name`` of type ``kind`` to one direction of ``proxy``."""
        self.call(
            "POST",
            f"/proxies/{proxy}/toxics",
            {
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )

    def remove(self, proxy: str, name: str) -> None:
        """Remove the toxic ``name`` from ``proxy``."""
        self.call("DELETE", f"/proxies/{proxy}/toxics/{name}")

    def toxics(self, proxy: str) -> list[str]:
        """The names of the toxics on ``proxy`` now."""
        return [t["name"] for t in self.call("GET", f"/proxies/{proxy}/toxics")]

    def reset(self) -> None:
        """Every proxy enabled, every toxic removed (Toxiproxy's own reset)."""
        self.call("POST", "/reset")

    @contextlib.asynccontextmanager
    async def toxic(
        self,
        proxies: list[str],
        name: str,
        kind: str,
        streams: tuple[str, ...] = (DOWNSTREAM,),
        **attributes: int | float,
    ) -> AsyncIterator[None]:
        """The toxic on each of ``proxies`` and ``streams`` for the block; removed after.

        The calls run in a thread: removing a toxic can take a second while Toxiproxy
        closes its connections, and the test's event loop, which runs the load and times
        every answer, must not stall meanwhile.
        """
        added: list[tuple[str, str]] = []
        try:
            for proxy in proxies:
                for stream in streams:
                    toxic = f"{name}-{stream}"
                    await asyncio.to_thread(self.add, proxy, toxic, kind, stream, **attributes)
                    added.append((proxy, toxic))
            yield
        finally:
            for proxy, toxic in added:
                await asyncio.to_thread(self.remove, proxy, toxic)


@dataclass
class NetFault:
    """The ``netfault`` cluster and the Toxiproxy in front of its brokers."""

    cluster: localkafka.Cluster
    proxy: Toxiproxy

    def proxies(self, *nodes: localkafka.Node) -> list[str]:
        """The proxy names of ``nodes`` (every broker's without any)."""
        return [proxy_name(n) for n in nodes or self.cluster.nodes]


def proxy_cluster(cluster: localkafka.Cluster, log: Path) -> Toxiproxy:
    """Start Toxiproxy with one proxy per broker: advertised port -> the broker's port."""
    server = Toxiproxy.start(log)
    try:
        for node in cluster.nodes:
            if node.proxy_port is None:
                raise ToxiproxyError(f"{cluster.name} node {node.node_id} has no proxy port")
            server.create_proxy(proxy_name(node), node.proxy_port, node.port)
    except BaseException:
        server.stop()
        raise
    return server
