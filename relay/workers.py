"""``relay serve --workers N``: N relay processes on one port, so a pod uses all its cores.

One relay process is bound by one core (the event loop and the signature check are
Python). The supervisor here starts N ordinary ``relay serve`` processes as workers:

- each binds the webhook port with SO_REUSEPORT, so the kernel spreads connections
  across them; each has its own Kafka producer, ordered per location as before (a
  location's records all go through whichever worker received them, and a record is
  acknowledged before its 2xx, so order per sender retry is kept);
- Prometheus metrics go to files in a private folder (``PROMETHEUS_MULTIPROC_DIR``), and
  the supervisor alone serves ``/metrics``, adding up every worker's figures;
- SIGTERM or SIGINT is passed to every worker, which shuts down as a single relay does;
- a worker that exits on its own takes the others down (SIGTERM, then exit 1), so
  Kubernetes restarts the container rather than it running short of workers unseen.

The in-process dedup window is per worker: a repeat that lands on another worker is
published again with the same ``ce_id``, for consumers to drop (as after any restart).

With the spool on, worker ``i`` keeps its own spool in ``<RELAY_SPOOL_DIR>/worker-<i>``
with an equal share of ``RELAY_SPOOL_MAX_BYTES``. Records left by a run with another
number of processes would be replayed by nobody, so start-up refuses them
(:func:`stranded_spools`) rather than strand them silently.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import signal
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path

from prometheus_client import CollectorRegistry, multiprocess

from relay.app import create_metrics_app
from relay.errors import ConfigError
from relay.metrics import METRICS_DIR_VARIABLE
from relay.server import start
from relay.settings import Settings
from relay.spool.frames import SEGMENT_SUFFIX

log = logging.getLogger(__name__)

#: marks a worker's command line; ``relay serve`` accepts it but does not document it
WORKER_FLAG = "--worker"
_KILL_AFTER_S = 5.0
_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>


def worker_argv() -> list[str]:
    """The command line of one worker: this interpreter running ``relay serve`` as a worker."""
    return [sys.executable, "-m", "relay", "serve", WORKER_FLAG]


def worker_spool_dir(spool_dir: Path, index: int) -> Path:
    """The spool folder of worker ``index``."""
    return spool_dir / f"worker-{index}"


def stranded_spools(spool_dir: Path, workers: int) -> list[Path]:
    """Spool folders holding segments that no process of this run would drain.

    One process spools into ``spool_dir`` itself; worker ``i`` of several into
    :func:`worker_spool_dir`.
    """
    in_use = (
        {spool_dir} if workers == 1 else {worker_spool_dir(spool_dir, i) for i in range(workers)}
    )
    candidates = [spool_dir, *sorted(spool_dir.glob("worker-*"))]
    return [d for d in candidates if d not in in_use and any(d.glob(f"*{SEGMENT_SUFFIX}"))]


def check_spool_layout(settings: Settings) -> None:
    """Raise ConfigError if a spool of a run with another process count holds records."""
    if settings.spool_dir is None:
        return
    stranded = stranded_spools(settings.spool_dir, settings.workers)
    if stranded:
        raise ConfigError(
            f"RELAY_SPOOL_DIR={settings.spool_dir}: {', '.join(map(str, stranded))} still "
            f"hold(s) records of a run with another number of workers than "
            f"RELAY_WORKERS={settings.workers}; run with that number until drained"
        )


def worker_env(
    settings: Settings, environ: Mapping[str, str], metrics_dir: str, index: int
) -> dict[str, str]:
    """Worker ``index``'s environment: the parent's, its metrics to files, its own spool."""
    env = {**environ, METRICS_DIR_VARIABLE: metrics_dir, "RELAY_WORKERS": "1"}
    if settings.spool_dir is not None:
        env["RELAY_SPOOL_DIR"] = str(worker_spool_dir(settings.spool_dir, index))
        env["RELAY_SPOOL_MAX_BYTES"] = str(settings.spool_max_bytes // settings.workers)
    return env


def supervise(settings: Settings, environ: Mapping[str, str]) -> int:
    """Run ``settings.workers`` relay processes until SIGTERM or SIGINT; the exit status."""
    with tempfile.TemporaryDirectory(prefix="relay-metrics-") as metrics_dir:
        envs = [worker_env(settings, environ, metrics_dir, i) for i in range(settings.workers)]
        return asyncio.run(_supervise(settings, metrics_dir, envs))


async def _supervise(settings: Settings, metrics_dir: str, envs: list[dict[str, str]]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    registry = CollectorRegistry()
    # prometheus_client's multiprocess module is not annotated.
    multiprocess.MultiProcessCollector(registry, path=metrics_dir)  # type: ignore[no-untyped-call]
    metrics_runner = await start(
        create_metrics_app(registry), settings.http_host, settings.metrics_port
    )
    children = [await _spawn(env) for env in envs]
    log.info(
        "supervising",
        extra={
            "event": "startup",
            "workers": [c.pid for c in children],
            "port": settings.http_port,
        },
    )
    exits = [asyncio.create_task(c.wait()) for c in children]
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait([stopping, *exits], return_when=asyncio.FIRST_COMPLETED)
    status = 0
    if not stop.is_set():
        early = [c.pid for c in children if c.returncode is not None]
        log.error(
            "a worker exited; stopping the others", extra={"event": "shutdown", "pids": early}
        )
        status = 1
    stopping.cancel()
    for child in children:
        if child.returncode is None:
            child.send_signal(signal.SIGTERM)
    # Each worker keeps its own shutdown grace; past it (and a margin), it is killed.
    await asyncio.wait(exits, timeout=settings.shutdown_grace_s + _KILL_AFTER_S)
    for child in children:
        if child.returncode is None:
            child.kill()
    await asyncio.gather(*exits)
    for child in children:
        multiprocess.mark_process_dead(child.pid, metrics_dir)  # type: ignore[no-untyped-call]
    await metrics_runner.cleanup()
    if any(c.returncode != 0 for c in children):
        status = 1
    log.info("supervisor: done", extra={"event": "shutdown", "status": status})
    return status


async def _spawn(env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """Start one worker; it inherits stdout and stderr, so its logs join the supervisor's."""
    return await asyncio.create_subprocess_exec(
        *worker_argv(),
        env=dict(env),
        stdin=asyncio.subprocess.DEVNULL,
        preexec_fn=_die_with_parent if sys.platform == "linux" else None,
    )


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the supervisor dies, even by SIGKILL.

    Without it, workers of a killed supervisor would keep the port and serve on,
    unsupervised and unscraped.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
