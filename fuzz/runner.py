"""Drive the ``fuzz_*`` targets with random and mutated bytes.

Each target is a Hypothesis test, run through its ``fuzz_one_input(buffer)``
entry point: Hypothesis turns the bytes into the test's arguments, so a
mutated buffer is a mutated input of the right type. Buffers that produced a
valid input are kept as seeds for later mutations.

A crash is anything a target raises (it catches its documented errors
itself), an input that runs longer than the per-input time limit, or an
error logged with a traceback while the input ran: code that swallows an
unexpected exception and logs it still has a bug.
"""

from __future__ import annotations

import importlib
import logging
import pkgutil
import random
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import fuzz

PREFIX = "targets_"
MAX_SEEDS = 512
# bytes Hypothesis may need to build one input; most targets use far fewer
MAX_BUFFER = 8192


@dataclass(frozen=True)
class Target:
    """One ``fuzz_*`` function; ``name`` is ``<module suffix>.<function>``."""

    name: str
    test: Any


@dataclass(frozen=True)
class Crash:
    input: str
    error: str
    traceback: str
    buffer: bytes


@dataclass(frozen=True)
class Report:
    target: str
    iterations: int
    valid: int
    seconds: float
    crash: Crash | None


class InputTimeout(BaseException):
    """One input ran past its time limit (a BaseException, so no ``except Exception`` eats it)."""


def discover() -> list[Target]:
    """Every ``fuzz_*`` target in every ``fuzz/targets_*.py``, sorted by name."""
    out: list[Target] = []
    for info in sorted(pkgutil.iter_modules(fuzz.__path__), key=lambda i: i.name):
        if not info.name.startswith(PREFIX):
            continue
        module = importlib.import_module(f"{fuzz.__name__}.{info.name}")
        short = info.name[len(PREFIX) :]
        for attr in sorted(vars(module)):
            test = getattr(module, attr)
            # look at the class: reading the property would build (and cache) the target
            handle = getattr(test, "hypothesis", None)
            if attr.startswith("fuzz_") and hasattr(type(handle), "fuzz_one_input"):
                out.append(Target(f"{short}.{attr}", test))
    return out


def select(targets: list[Target], wanted: str | None) -> list[Target]:
    """Targets matching ``wanted``: a full name, a function name or a module suffix."""
    if wanted is None:
        return targets
    return [
        t for t in targets if wanted in (t.name, t.name.split(".", 1)[1], t.name.split(".", 1)[0])
    ]


def run_target(
    target: Target,
    seconds: float,
    *,
    seed: int | None = None,
    input_timeout: float = 10.0,
) -> Report:
    """Fuzz ``target`` for ``seconds``; stop at the first crash."""
    rng = random.Random(seed)
    fuzz_one, drawn = _fuzz_entry(target)
    seeds: list[bytes] = []
    iterations = valid = 0
    crash: Crash | None = None
    started = time.monotonic()
    with _logged_tracebacks() as logged:
        while time.monotonic() - started < seconds:
            buffer = _next_buffer(rng, seeds)
            drawn.clear()
            logged.clear()
            try:
                with _time_limit(input_timeout):
                    kept = fuzz_one(buffer)
            except KeyboardInterrupt:
                raise
            except BaseException as exc:
                if isinstance(exc, InputTimeout):
                    error = f"InputTimeout: the input ran longer than {input_timeout:g} s"
                else:
                    error = f"{type(exc).__name__}: {exc}"
                crash = Crash(_shown(drawn), error, traceback.format_exc(), buffer)
                iterations += 1
                break
            iterations += 1
            if logged:
                record = logged[0]
                crash = Crash(
                    _shown(drawn),
                    f"logged with a traceback by {record.name}: {record.getMessage()}",
                    logging.Formatter().formatException(record.exc_info) if record.exc_info else "",
                    buffer,
                )
                break
            if kept is not None:
                valid += 1
                if len(seeds) < MAX_SEEDS:
                    seeds.append(bytes(kept))
                else:
                    seeds[rng.randrange(MAX_SEEDS)] = bytes(kept)
    return Report(target.name, iterations, valid, time.monotonic() - started, crash)


# id(test) -> its fuzz entry point and where that notes each input's arguments
_ENTRIES: dict[int, tuple[Callable[[bytes], bytes | None], dict[str, Any]]] = {}


def _fuzz_entry(target: Target) -> tuple[Callable[[bytes], bytes | None], dict[str, Any]]:
    """``fuzz_one_input`` of the target, and the dict that gets each input's arguments."""
    key = id(target.test)
    if key in _ENTRIES:
        return _ENTRIES[key]
    drawn: dict[str, Any] = {}
    handle = target.test.hypothesis
    inner = handle.inner_test

    def noting(*args: Any, **kwargs: Any) -> Any:
        drawn["args"], drawn["kwargs"] = args, kwargs
        return inner(*args, **kwargs)

    # Hypothesis reads inner_test once, when fuzz_one_input is first fetched
    handle.inner_test = noting
    try:
        entry = handle.fuzz_one_input
    finally:
        handle.inner_test = inner
    _ENTRIES[key] = (entry, drawn)
    return _ENTRIES[key]


def _shown(drawn: dict[str, Any]) -> str:
    if not drawn:
        return "<no input was drawn>"
    parts = [repr(a) for a in drawn["args"]]
    parts += [f"{k}={v!r}" for k, v in drawn["kwargs"].items()]
    return ", ".join(parts)


def _next_buffer(rng: random.Random, seeds: list[bytes]) -> bytes:
    if not seeds or rng.random() < 0.25:
        size = rng.choice((16, 128, 1024, MAX_BUFFER))
        return rng.randbytes(rng.randrange(1, size + 1))
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 4)):
        _mutate(rng, data, seeds)
    return bytes(data[:MAX_BUFFER])


def _mutate(rng: random.Random, data: bytearray, seeds: list[bytes]) -> None:
    op = rng.randrange(6)
    at = rng.randrange(len(data) + 1)
    if op == 0 and data:
        data[min(at, len(data) - 1)] ^= 1 << rng.randrange(8)
    elif op == 1 and data:
        data[min(at, len(data) - 1)] = rng.choice((0, 1, 0x7F, 0x80, 0xFF))
    elif op == 2:
        data[at:at] = rng.randbytes(rng.randint(1, 16))
    elif op == 3 and data:
        del data[at : at + rng.randint(1, 16)]
    elif op == 4 and data:
        end = min(len(data), at + rng.randint(1, 32))
        data[at:at] = data[at:end]
    else:
        other = rng.choice(seeds)
        cut = rng.randrange(len(other) + 1)
        data[at:] = other[cut:]


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise ``InputTimeout`` after ``seconds`` (main thread with SIGALRM only)."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if not usable or seconds <= 0:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise InputTimeout()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class _Collect(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__(logging.ERROR)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[0] is not None:
            self.records.append(record)


@contextmanager
def _logged_tracebacks() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []
    handler = _Collect(records)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield records
    finally:
        root.removeHandler(handler)


def run(
    targets: list[Target],
    seconds: float,
    *,
    seed: int | None = None,
    echo: Callable[[str], None] = print,
) -> list[Report]:
    """Run each target for ``seconds``, printing one line per target and any crash."""
    reports = []
    for target in targets:
        report = run_target(target, seconds, seed=seed)
        reports.append(report)
        rate = f"{report.iterations} inputs ({report.valid} valid) in {report.seconds:.1f} s"
        if report.crash is None:
            echo(f"ok     {target.name}: {rate}")
            continue
        echo(f"CRASH  {target.name}: {rate}")
        echo(f"  error: {report.crash.error}")
        echo(f"  input: {report.crash.input}")
        echo(f"  buffer: {report.crash.buffer.hex()}")
        echo("  " + report.crash.traceback.rstrip().replace("\n", "\n  "))
    return reports
