"""Several worker processes serving the same ports, and the parent that keeps them running.

Each worker is a fresh interpreter running ``gateway serve`` for one slot:
it builds its own gateway (policies, models, store connection, journal) and
binds both listeners with ``SO_REUSEPORT``, so the kernel spreads incoming
connections over the workers. Fresh interpreters rather than ``fork``: a
fork taken after models are loaded copies torch's and onnxruntime's thread
pools in a state they cannot recover from.

The parent loads no policy and serves nothing. It

- starts slot 0 first and waits for it to listen, so a configuration or
  start-up error is said once and the store's schema is created by one
  process; then starts the others together;
- restarts a worker that dies, after a pause that doubles with each quick
  failure, and gives up (exit ``EXIT_WORKERS_FAILING``) when a slot keeps
  dying right after its start;
- on SIGTERM or SIGINT sends SIGTERM to every worker, waits for them to
  drain, SIGKILLs what is left after the grace, and exits 0.

A worker asks the kernel to send it SIGTERM when the parent dies
(``PR_SET_PDEATHSIG``), so a SIGKILLed parent leaves no worker serving.

The worker's half lives here too (``WorkerRole``): how it learns its slot,
tells the parent it listens, and stamps its slot on every log line.
"""

from __future__ import annotations

import asyncio
import ctypes
import glob
import logging
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("gateway.workers")

# what the parent tells a worker, besides its slot (given as a command-line flag)
ENV_PARENT = "GATEWAY_WORKER_PARENT"
ENV_READY_FD = "GATEWAY_WORKER_READY_FD"
# where every worker writes its metrics snapshot, for a scrape on any of them
ENV_METRICS_DIR = "GATEWAY_METRICS_DIR"

# the parent's exit status when a slot keeps dying right after its start
EXIT_WORKERS_FAILING = 3

_PR_SET_PDEATHSIG = 1


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, which containers narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- the worker's half -------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRole:
    """What a worker process knows of its place among the workers."""

    slot: int
    parent: int | None = None
    ready_fd: int | None = None
    metrics_dir: str | None = None

    @classmethod
    def from_environ(cls, slot: int) -> WorkerRole:
        env = os.environ
        parent, ready = env.get(ENV_PARENT), env.get(ENV_READY_FD)
        return cls(
            slot=slot,
            parent=int(parent) if parent else None,
            ready_fd=int(ready) if ready else None,
            metrics_dir=env.get(ENV_METRICS_DIR) or None,
        )

    def follow_parent(self) -> None:
        """Be sent SIGTERM when the parent dies, and stop now if it already has."""
        if self.parent is None or not sys.platform.startswith("linux"):
            return
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            log.warning("cannot ask to be stopped with the parent: errno %d", ctypes.get_errno())
        # the parent may have died before the request above was in place
        if os.getppid() != self.parent:
            raise SystemExit(f"gateway worker {self.slot}: the supervising process is gone")

    def stamp_logs(self) -> None:
        """Put ``worker: <slot>`` on every log line this process writes."""
        stamp = _SlotStamp(self.slot)
        for handler in logging.getLogger().handlers:
            handler.addFilter(stamp)

    def listening(self) -> None:
        """Tell the parent both listeners are bound and the worker serves."""
        if self.ready_fd is None:
            return
        try:
            os.write(self.ready_fd, b"ready\n")
            os.close(self.ready_fd)
        except OSError:
            pass  # the parent is gone; PR_SET_PDEATHSIG stops this process


class _SlotStamp(logging.Filter):
    def __init__(self, slot: int) -> None:
        super().__init__()
        self.slot = slot

    def filter(self, record: logging.LogRecord) -> bool:
        fields = getattr(record, "fields", None)
        # a copy: the dict may be a caller's, reused for other lines
        record.fields = {"worker": self.slot, **(fields if isinstance(fields, dict) else {})}
        return True


# -- the parent --------------------------------------------------------------------------

METRICS_DIR_PREFIX = "gateway-metrics-"


def fresh_metrics_dir() -> str:
    """An empty directory for the workers' metric files, named after this process.

    A parent killed with SIGKILL cannot delete its directory: the next parent
    to start deletes those whose process is gone.
    """
    base = tempfile.gettempdir()
    for path in glob.glob(os.path.join(base, f"{METRICS_DIR_PREFIX}*-*")):
        owner = os.path.basename(path)[len(METRICS_DIR_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _running(int(owner)):
            shutil.rmtree(path, ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{METRICS_DIR_PREFIX}{os.getpid()}-")


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


@dataclass
class Slot:
    number: int
    proc: asyncio.subprocess.Process | None = None
    # consecutive deaths soon after a start
    quick_failures: int = 0
    ever_ready: bool = False
    restarts: int = 0
    listening: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Supervisor:
    """Run ``count`` workers, each started with ``command(slot)``, until told to stop."""

    count: int
    command: Callable[[int], Sequence[str]]
    # how long a stopping worker may drain before it is killed
    grace: float = 30.0
    # a worker that dies within this many seconds of listening (or before) failed quickly
    steady_after: float = 10.0
    # this many quick failures in a row of one slot and the parent gives up
    max_quick_failures: int = 5
    # the pause before a restart: doubled per quick failure, up to the cap
    backoff_first: float = 0.5
    backoff_cap: float = 10.0
    slots: list[Slot] = field(default_factory=list)
    metrics_dir: str = ""
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _exit: int = 0

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT (exit 0) or until the workers cannot be kept up."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_requested, sig)
        self.metrics_dir = fresh_metrics_dir()
        self.slots = [Slot(n) for n in range(self.count)]
        try:
            return await self._run()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def _run(self) -> int:
        first, *rest = self.slots
        keepers = [asyncio.create_task(self._keep(first), name="worker-0")]
        # the others start once the first listens: a start-up error is then said once
        await self._first_ready(first, keepers[0])
        if not self._stopping.is_set():
            keepers += [asyncio.create_task(self._keep(s), name=f"worker-{s.number}") for s in rest]
            log.info(
                "gateway workers serving",
                extra={"fields": {"workers": self.count, "supervisor_pid": os.getpid()}},
            )
        await self._stopping.wait()
        await self._stop_all()
        for task in keepers:
            task.cancel()
        await asyncio.gather(*keepers, return_exceptions=True)
        return self._exit

    async def _first_ready(self, slot: Slot, keeper: asyncio.Task) -> None:
        waits = [
            asyncio.ensure_future(self._stopping.wait()),
            asyncio.ensure_future(slot.listening.wait()),
        ]
        await asyncio.wait([keeper, *waits], return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()

    def _stop_requested(self, sig: int) -> None:
        if not self._stopping.is_set():
            log.info("stopping the workers", extra={"fields": {"signal": signal.Signals(sig).name}})
            self._stopping.set()

    def _give_up(self, code: int, why: str, slot: Slot) -> None:
        log.error(why, extra={"fields": {"worker": slot.number, "exit_status": code}})
        self._exit = code
        self._stopping.set()

    async def _keep(self, slot: Slot) -> None:
        """Keep one slot's worker running until the parent stops."""
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            proc, ready = await self._spawn(slot)
            started = loop.time()
            listened_at: float | None = None
            if await ready:
                listened_at = loop.time()
                slot.ever_ready = True
                slot.listening.set()
            code = await proc.wait()
            if self._stopping.is_set():
                return
            if not slot.ever_ready:
                # it never served: restarting would fail the same way
                self._give_up(
                    code if code > 0 else 1,
                    f"gateway worker {slot.number} exited with status {code} before it "
                    "listened; stopping",
                    slot,
                )
                return
            lived = loop.time() - (listened_at if listened_at is not None else started)
            quick = listened_at is None or lived < self.steady_after
            slot.quick_failures = slot.quick_failures + 1 if quick else 0
            if slot.quick_failures >= self.max_quick_failures:
                self._give_up(
                    EXIT_WORKERS_FAILING,
                    f"gateway worker {slot.number} died {slot.quick_failures} times in a row "
                    f"within {self.steady_after:g}s of starting; giving up",
                    slot,
                )
                return
            pause = (
                min(self.backoff_first * 2 ** (slot.quick_failures - 1), self.backoff_cap)
                if quick
                else 0.1
            )
            log.warning(
                "gateway worker died; restarting it",
                extra={
                    "fields": {
                        "worker": slot.number,
                        "pid": proc.pid,
                        "exit_status": code,
                        "seconds_alive": round(loop.time() - started, 1),
                        "restart_in_seconds": pause,
                    }
                },
            )
            try:
                await asyncio.wait_for(self._stopping.wait(), pause)
                return
            except TimeoutError:
                slot.restarts += 1

    async def _spawn(self, slot: Slot) -> tuple[asyncio.subprocess.Process, asyncio.Future[bool]]:
        """Start the slot's worker; the future says whether it listened before it exited."""
        loop = asyncio.get_running_loop()
        read_fd, write_fd = os.pipe()
        env = {
            **os.environ,
            ENV_PARENT: str(os.getpid()),
            ENV_READY_FD: str(write_fd),
            ENV_METRICS_DIR: self.metrics_dir,
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command(slot.number), pass_fds=(write_fd,), env=env
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.proc = proc
        ready: asyncio.Future[bool] = loop.create_future()

        def readable() -> None:
            try:
                said = os.read(read_fd, 64)
            except OSError:
                said = b""
            loop.remove_reader(read_fd)
            os.close(read_fd)
            if not ready.done():
                # end of file: the worker exited (or closed the pipe) without listening
                ready.set_result(said.startswith(b"ready"))

        loop.add_reader(read_fd, readable)
        log.info(
            "gateway worker started", extra={"fields": {"worker": slot.number, "pid": proc.pid}}
        )
        return proc, ready

    async def _stop_all(self) -> None:
        """SIGTERM every worker, wait up to the grace, SIGKILL the rest."""
        procs = [s.proc for s in self.slots if s.proc is not None and s.proc.returncode is None]
        for proc in procs:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if not waits:
            return
        _, late = await asyncio.wait(waits, timeout=self.grace)
        for proc in procs:
            if proc.returncode is None:
                log.warning(
                    "gateway worker did not stop within the grace; killing it",
                    extra={"fields": {"pid": proc.pid, "grace_seconds": self.grace}},
                )
                try:
                    proc.kill()
                except ProcessLookupError:
                    pass
        if late:
            await asyncio.wait(late)
