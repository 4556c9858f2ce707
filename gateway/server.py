"""Run the proxy and admin listeners in this process until told to stop."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from gateway.app import build_gateway, create_admin_app, create_app
from gateway.config import Settings

log = logging.getLogger("gateway")


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
    gw = build_gateway(settings)
    proxy_runner = web.AppRunner(create_app(gw), handler_cancellation=True, access_log=None)
    admin_runner = web.AppRunner(create_admin_app(gw), handler_cancellation=True, access_log=None)
    await proxy_runner.setup()
    await admin_runner.setup()
    listeners = settings.listeners
    await web.TCPSite(
        proxy_runner, listeners.proxy.host, listeners.proxy.port, shutdown_timeout=10
    ).start()
    await web.TCPSite(admin_runner, listeners.admin.host, listeners.admin.port).start()
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
    if ready is not None:
        ready.set()
    await stop.wait()
    log.info("shutting down")
    await admin_runner.cleanup()
    await proxy_runner.cleanup()
