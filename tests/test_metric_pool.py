"""Several workers' metrics merged into one scrape (gateway/observability/metric_pool.py)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.observability.metric_pool import GAUGES_FRESH_FOR, MetricPool


class Worker:
    """One worker's registry, as the gateway's Metrics builds it."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("requests_total", "Requests", ["route"], registry=self.registry)
        self.latency = Histogram(
            "latency_seconds", "Latency", buckets=(0.001, 0.01), registry=self.registry
        )
        self.queue = Gauge("queue_depth", "Queue", registry=self.registry)


def scraped(pool: MetricPool) -> dict[tuple[str, tuple], float]:
    text = generate_latest(pool.exposition).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def dead_pid() -> int:
    done = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_counters_and_histograms_add_up_and_gauges_stay_per_process(tmp_path: Path):
    me, other = Worker(), Worker()
    me.requests.labels("chat").inc(3)
    other.requests.labels("chat").inc(4)
    other.requests.labels("rag").inc()
    me.latency.observe(0.0005)
    other.latency.observe(0.005)
    other.latency.observe(0.5)
    me.queue.set(2)
    other.queue.set(7)
    # the other worker is this test's own parent: a process that is running
    MetricPool(other.registry, tmp_path, pid=os.getppid()).write()
    pool = MetricPool(me.registry, tmp_path)

    got = scraped(pool)
    assert got[("requests_total", (("route", "chat"),))] == 7
    assert got[("requests_total", (("route", "rag"),))] == 1
    assert got[("latency_seconds_bucket", (("le", "0.001"),))] == 1
    assert got[("latency_seconds_bucket", (("le", "0.01"),))] == 2
    assert got[("latency_seconds_bucket", (("le", "+Inf"),))] == 3
    assert got[("latency_seconds_count", ())] == 3
    assert abs(got[("latency_seconds_sum", ())] - 0.5055) < 1e-9
    assert got[("queue_depth", (("pid", str(os.getpid())),))] == 2
    assert got[("queue_depth", (("pid", str(os.getppid())),))] == 7
    # the series' creation time is the earliest worker's, not a sum of times
    created = [
        s.value
        for w in (me, other)
        for m in w.registry.collect()
        for s in m.samples
        if s.name == "requests_created" and s.labels == {"route": "chat"}
    ]
    assert len(created) == 2
    assert got[("requests_created", (("route", "chat"),))] == min(created)


def test_the_scrape_shows_this_workers_updates_at_once(tmp_path: Path):
    me = Worker()
    pool = MetricPool(me.registry, tmp_path)
    pool.write()
    me.requests.labels("chat").inc(5)
    assert scraped(pool)[("requests_total", (("route", "chat"),))] == 5


def test_a_dead_workers_counts_stay_and_its_gauges_go(tmp_path: Path):
    me, gone = Worker(), Worker()
    gone.requests.labels("chat").inc(9)
    gone.queue.set(4)
    MetricPool(gone.registry, tmp_path, pid=dead_pid()).write()
    got = scraped(MetricPool(me.registry, tmp_path))
    assert got[("requests_total", (("route", "chat"),))] == 9
    assert [key for key in got if key[0] == "queue_depth"] == [
        ("queue_depth", (("pid", str(os.getpid())),))
    ]


def test_a_stale_snapshots_gauges_are_left_out(tmp_path: Path):
    me, stuck = Worker(), Worker()
    stuck.requests.labels("chat").inc(2)
    stuck.queue.set(4)
    writer = MetricPool(stuck.registry, tmp_path, pid=os.getppid())
    writer.write()
    old = time.time() - GAUGES_FRESH_FOR - 1
    os.utime(writer.path, (old, old))
    got = scraped(MetricPool(me.registry, tmp_path))
    assert got[("requests_total", (("route", "chat"),))] == 2
    assert ("queue_depth", (("pid", str(os.getppid())),)) not in got


def test_unreadable_or_foreign_files_are_skipped(tmp_path: Path):
    me, other = Worker(), Worker()
    other.requests.labels("chat").inc()
    MetricPool(other.registry, tmp_path, pid=os.getppid()).write()
    (tmp_path / f"{dead_pid()}.metrics.json").write_text("{half")
    (tmp_path / "notes.metrics.json").write_text("[]")
    got = scraped(MetricPool(me.registry, tmp_path))
    assert got[("requests_total", (("route", "chat"),))] == 1


async def test_the_writer_refreshes_the_snapshot_and_writes_a_last_one_when_stopped(
    tmp_path: Path,
):
    worker = Worker()
    pool = MetricPool(worker.registry, tmp_path)
    reader = MetricPool(Worker().registry, tmp_path, pid=os.getppid())
    task = asyncio.create_task(pool.run(interval=0.05))
    worker.requests.labels("chat").inc()
    await asyncio.sleep(0.2)
    assert scraped(reader)[("requests_total", (("route", "chat"),))] == 1
    worker.requests.labels("chat").inc()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert scraped(reader)[("requests_total", (("route", "chat"),))] == 2
    assert not list(tmp_path.glob("*.partial"))
