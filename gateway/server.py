"""Run the proxy and admin listeners in this process until told to stop.

With several workers (``gateway.workers``) each worker runs ``serve`` with
its ``WorkerRole``; the parent only checks the addresses first
(``check_addresses``).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import signal

from aiohttp import web

from gateway.app import build_gateway, create_admin_app, create_app
from gateway.config import AdminListener, Settings
from gateway.errors import ListenError
from gateway.listeners import GuardedSite
from gateway.observability.metric_pool import MetricPool
from gateway.store.files import tighten_dir
from gateway.workers import WorkerRole

log = logging.getLogger("gateway")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        # a hostname, or "" (every interface): assume it can be reached from elsewhere
        return False


def warn_if_exposed(admin: AdminListener) -> None:
    """Say loudly when the admin listener can be reached from the network in plain HTTP."""
    if is_loopback(admin.host) or admin.tls_in_front:
        return
    log.warning(
        "the admin listener on %s:%d is reachable beyond this machine, in plain HTTP: the "
        "governance API, the review and incident pages and their tokens and cookies travel "
        "unencrypted. Put TLS and access control in front and set "
        "listeners.admin.tls_in_front: true, or bind it to 127.0.0.1 (--admin-host)",
        admin.host or "*",
        admin.port,
        extra={"fields": {"admin_host": admin.host, "admin_port": admin.port}},
    )


def listen_error(
    exc: OSError, what: str, host: str, port: int, port_setting: str, host_setting: str
) -> ListenError:
    """One line saying which listener could not bind, why, and which setting to change."""
    change = port_setting
    if exc.errno == errno.EADDRINUSE:
        why = f"port {port} is already in use"
    elif exc.errno == errno.EACCES:
        why = f"port {port} needs privileges this process does not have"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"{host} is not an address of this machine"
        change = host_setting or port_setting
    else:
        why = (exc.strerror or str(exc)).lower()
        if host_setting and host_setting != port_setting:
            change = f"{port_setting} or {host_setting}"
    return ListenError(
        f"gateway: cannot start the {what} on {host or '*'}:{port}: {why}; change {change}"
    )


# the flag and the gateway.yaml key that set each listener's port and address
LISTENER_SETTINGS = {
    "proxy": ("--port or listeners.proxy.port", "--host or listeners.proxy.host"),
    "admin": ("--admin-port or listeners.admin.port", "--admin-host or listeners.admin.host"),
}


def run_loop(coro):
    """Run on uvloop where it is installed: it cuts the per-request cost of the event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    else:
        return uvloop.run(coro)


async def check_addresses(settings: Settings) -> Settings:
    """Bind each listener's address once, alone, before workers start; the settings to give them.

    Workers bind with ``SO_REUSEPORT``, which another process of the same user
    holding the port with it too would let them share, silently; a bind without
    it fails on any holder, as a single process's would. A port of 0 becomes
    the one the system picked, so every worker binds the same.
    """
    loop = asyncio.get_running_loop()
    listeners = settings.listeners
    resolved = {}
    for name, listener in (("proxy", listeners.proxy), ("admin", listeners.admin)):
        try:
            server = await loop.create_server(
                asyncio.Protocol, listener.host, listener.port, reuse_address=True
            )
        except OSError as exc:
            raise listen_error(
                exc, f"{name} listener", listener.host, listener.port, *LISTENER_SETTINGS[name]
            ) from None
        port = int(server.sockets[0].getsockname()[1]) if server.sockets else listener.port
        server.close()
        await server.wait_closed()
        resolved[name] = listener.model_copy(update={"port": port})
    return settings.model_copy(update={"listeners": listeners.model_copy(update=resolved)})


async def serve(
    settings: Settings,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    worker: WorkerRole | None = None,
):
    """Run both listeners until SIGINT/SIGTERM (or ``stop``), then drain and flush.

    As one of several workers (``worker``), bind the ports shared, pool the
    metrics with the other workers and tell the parent once listening.
    """
    # the admin token and, by default, the database live here: the owner's only
    tighten_dir(settings.data_dir)
    gw = build_gateway(settings, worker=worker is not None)
    snapshots: asyncio.Task[None] | None = None
    if worker is not None and worker.metrics_dir:
        pool = MetricPool(gw.metrics.registry, worker.metrics_dir)
        gw.metrics.exposition = pool.exposition
        snapshots = asyncio.create_task(pool.run(), name="metric snapshots")
    proxy_runner = web.AppRunner(
        create_app(gw), handler_cancellation=True, access_log=None, shutdown_timeout=10
    )
    admin_runner = web.AppRunner(create_admin_app(gw), handler_cancellation=True, access_log=None)
    await proxy_runner.setup()
    await admin_runner.setup()
    if worker is not None:
        # one of several on shared ports: join them only once the models are in
        # memory, so a probe or request never lands on a worker still loading
        # while the others answer (a lone process binds at once and says "loading")
        while gw.warming:
            await asyncio.sleep(0.1)
    listeners, limits = settings.listeners, settings.limits
    count = gw.metrics.shed.labels
    for name, runner, listener in (
        ("proxy", proxy_runner, listeners.proxy),
        ("admin", admin_runner, listeners.admin),
    ):
        site = GuardedSite(
            runner,
            listener.host,
            listener.port,
            limits,
            lambda r: count(r).inc(),
            reuse_port=worker is not None,
        )
        try:
            await site.start()
        except OSError as exc:
            # undo the start (store, background tasks) before saying why in one line
            await admin_runner.cleanup()
            await proxy_runner.cleanup()
            await _stopped(snapshots)
            raise listen_error(
                exc, f"{name} listener", listener.host, listener.port, *LISTENER_SETTINGS[name]
            ) from None
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    log.info(
        "gateway listening",
        extra={
            "fields": {
                "proxy": f"http://{listeners.proxy.host}:{listeners.proxy.port}",
                "admin": f"http://{listeners.admin.host}:{listeners.admin.port}",
                "revision": gw.policies.serving.revision,
                "routes": [r.name for r in settings.routes],
            }
        },
    )
    warn_if_exposed(listeners.admin)
    if ready is not None:
        ready.set()
    if worker is not None:
        worker.listening()
    await stop.wait()
    log.info("shutting down")
    await admin_runner.cleanup()
    await proxy_runner.cleanup()
    await _stopped(snapshots)


async def _stopped(snapshots: asyncio.Task[None] | None) -> None:
    # cancelled, the task writes a last snapshot: everything this worker counted
    if snapshots is not None:
        snapshots.cancel()
        await asyncio.gather(snapshots, return_exceptions=True)
