"""Run the proxy and admin listeners in this process until told to stop."""

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
from gateway.store.files import tighten_dir

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


def run_loop(coro) -> None:
    """Run on uvloop where it is installed: it cuts the per-request cost of the event loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


async def serve(
    settings: Settings, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
):
    """Run both listeners until SIGINT/SIGTERM (or ``stop``), then drain and flush."""
    # the admin token and, by default, the database live here: the owner's only
    tighten_dir(settings.data_dir)
    gw = build_gateway(settings)
    proxy_runner = web.AppRunner(
        create_app(gw), handler_cancellation=True, access_log=None, shutdown_timeout=10
    )
    admin_runner = web.AppRunner(create_admin_app(gw), handler_cancellation=True, access_log=None)
    await proxy_runner.setup()
    await admin_runner.setup()
    listeners, limits = settings.listeners, settings.limits
    count = gw.metrics.shed.labels
    for name, runner, listener in (
        ("proxy", proxy_runner, listeners.proxy),
        ("admin", admin_runner, listeners.admin),
    ):
        site = GuardedSite(runner, listener.host, listener.port, limits, lambda r: count(r).inc())
        try:
            await site.start()
        except OSError as exc:
            # undo the start (store, background tasks) before saying why in one line
            await admin_runner.cleanup()
            await proxy_runner.cleanup()
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
    await stop.wait()
    log.info("shutting down")
    await admin_runner.cleanup()
    await proxy_runner.cleanup()
