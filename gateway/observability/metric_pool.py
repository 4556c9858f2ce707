"""Every worker's metrics in one scrape, whichever worker the scrape lands on.

Each worker counts in its own in-memory registry, as a lone process does,
and writes a snapshot of it to a shared directory about once a second
(``MetricPool.run``). A scrape merges the scraping worker's live registry
with the other workers' snapshots (``MetricPool.exposition``):

- counters, histograms and summaries are summed per series, so totals count
  every worker's traffic. A dead worker's snapshot stays, so totals never go
  backwards when a worker is replaced;
- gauges are shown per process, with a ``pid`` label (sum or max them in a
  query as the gauge means). A dead worker's gauges describe nothing any
  more, and are left out; so are those of a snapshot not rewritten for
  ``GAUGES_FRESH_FOR`` seconds (a stuck worker).

Why not prometheus_client's multiprocess mode: it writes every update to a
memory-mapped file, about ten writes per request, which cost two workers 6 %
of their throughput. A snapshot a second costs nothing per request; the price
is that other workers' figures in a scrape are up to a second old.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric

log = logging.getLogger("gateway.metrics")

SNAPSHOT_INTERVAL = 1.0
GAUGES_FRESH_FOR = 10.0
SUFFIX = ".metrics.json"

# sample kinds whose values add up across processes; ``_created`` is a time
_SUMMED_TYPES = frozenset({"counter", "histogram", "summary", "gaugehistogram"})


def snapshot(registry: CollectorRegistry) -> list[dict[str, Any]]:
    """The registry's metrics as plain data, ready for JSON."""
    return [
        {
            "name": m.name,
            "type": m.type,
            "help": m.documentation,
            "unit": m.unit,
            "samples": [[s.name, s.labels, s.value] for s in m.samples],
        }
        for m in registry.collect()
    ]


def merge(snapshots: Iterable[tuple[int, list[dict[str, Any]]]]) -> list[Metric]:
    """Merge ``(pid, snapshot)`` pairs into metrics: sum what adds up, label gauges by pid."""
    merged: dict[str, Metric] = {}
    values: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for pid, metrics in snapshots:
        for entry in metrics:
            name, kind = entry["name"], entry["type"]
            if name not in merged:
                merged[name] = Metric(name, entry["help"], kind, entry["unit"])
                values[name] = {}
            series = values[name]
            summed = merged[name].type in _SUMMED_TYPES
            for sample_name, labels, value in entry["samples"]:
                if not summed:
                    labels = {**labels, "pid": str(pid)}
                key = (sample_name, tuple(sorted(labels.items())))
                if key not in series:
                    series[key] = value
                elif sample_name.endswith("_created"):
                    # when the first worker created the series
                    series[key] = min(series[key], value)
                else:
                    series[key] += value
    for name, metric in merged.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
    return list(merged.values())


class _Pooled:
    """A collector that yields the merged metrics; registered alone in the scrape registry."""

    def __init__(self, pool: MetricPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        return iter(merge(self._pool.gather()))


class MetricPool:
    """This worker's side of the pooled metrics: write snapshots, and merge for a scrape."""

    def __init__(
        self, registry: CollectorRegistry, directory: str | Path, pid: int | None = None
    ) -> None:
        self.registry = registry
        self.directory = Path(directory)
        self.pid = os.getpid() if pid is None else pid
        self.path = self.directory / f"{self.pid}{SUFFIX}"
        self.exposition = CollectorRegistry(auto_describe=False)
        self.exposition.register(_Pooled(self))

    def write(self) -> None:
        """Replace this worker's snapshot in one step, so a reader never sees half of one."""
        data = json.dumps(snapshot(self.registry), separators=(",", ":"))
        partial = self.path.with_suffix(".partial")
        partial.write_text(data)
        os.replace(partial, self.path)

    async def run(self, interval: float = SNAPSHOT_INTERVAL) -> None:
        """Write a snapshot every ``interval`` seconds, and a last one when cancelled."""
        try:
            while True:
                self._write_logged()
                await asyncio.sleep(interval)
        finally:
            self._write_logged()

    def _write_logged(self) -> None:
        try:
            self.write()
        except OSError as exc:
            # the scrape then shows this worker's last snapshot; the worker serves on
            log.warning("cannot write the metrics snapshot %s: %s", self.path, exc)

    def gather(self) -> Iterator[tuple[int, list[dict[str, Any]]]]:
        """This worker's live metrics, then every other worker's last snapshot."""
        yield self.pid, snapshot(self.registry)
        now = time.time()
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            pid = _pid_of(path)
            if pid is None or pid == self.pid:
                continue
            try:
                written = path.stat().st_mtime
                metrics = json.loads(path.read_text())
            except (OSError, ValueError):
                # removed or replaced between listing and reading: next scrape
                continue
            if now - written > GAUGES_FRESH_FOR or not _running(pid):
                metrics = [m for m in metrics if m["type"] in _SUMMED_TYPES]
            yield pid, metrics


def _pid_of(path: Path) -> int | None:
    with contextlib.suppress(ValueError):
        return int(path.name[: -len(SUFFIX)])
    return None


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # another user's process has the number now: not our worker
    return True
