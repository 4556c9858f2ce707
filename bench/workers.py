"""Throughput of ``gateway serve --workers 2`` against ``--workers 1``, in one run.

Both gateways run side by side in front of one upstream, with the lexical
policies (phrases and copyright against the sample index, which is loaded:
its vectors and screen too). Rounds alternate which gateway is measured
first; each measurement is ``wrk`` with one thread and 16 keep-alive
connections sending non-streamed chat requests. The upstream is a raw asyncio
protocol answering a canned ~2,000-character completion, so that it and the
load generator take as little of the machine's CPU as they can. Prints JSON:
requests per second per round and the medians, their ratio, and the memory
of every process (VmRSS, and PSS, which splits shared pages between the
processes that map them).

    python bench/workers.py                      # 5 rounds of 10 s
    python bench/workers.py --rounds 3 --seconds 5

Needs ``wrk`` on the PATH (Debian: ``apt-get install wrk``). The sample
index is built once under ``--index-dir`` (a minute or two; the model must
be in the local Hugging Face cache).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from overhead import QUESTION, TEXT, free_port, wait_up  # noqa: E402

# answers every request on a connection with the same bytes, parsing only
# enough HTTP to find where a request ends
UPSTREAM = r"""
import asyncio, json, sys, time

BODY = json.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": int(time.time()),
    "model": "bench", "system_fingerprint": "fp_bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": sys.argv[2]},
                 "logprobs": None, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 10, "completion_tokens": 500, "total_tokens": 510},
}).encode()
RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(BODY)).encode() + b"\r\n\r\n" + BODY)


class Canned(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15:].split(b"\r\n", 1)[0])
            end = head_end + 4 + length
            if len(self.buffer) < end:
                return
            self.buffer = self.buffer[end:]
            self.transport.write(RESPONSE)


async def main():
    server = await asyncio.get_running_loop().create_server(
        Canned, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    await server.serve_forever()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""

WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
wrk.headers["Content-Type"] = "application/json"
"""


def build_index(index_dir: Path) -> Path:
    """The sample index, built (or found current) under ``index_dir``."""
    from gateway.index import ensure_sample

    sample = index_dir / "sample"
    sample.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(ROOT / "indexes" / "sample" / "corpus.jsonl", sample / "corpus.jsonl")
    return ensure_sample(index_dir, semantic=True)


def memory(pid: int) -> dict:
    """VmRSS and, where readable, PSS of one process, in MiB."""
    out: dict = {"pid": pid}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            out["rss_mib"] = round(int(line.split()[1]) / 1024, 1)
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                out["pss_mib"] = round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        found += [int(p) for p in text]
    return sorted(found)


def process_memory(pid: int, workers: int) -> dict:
    if workers == 1:
        return {"process": memory(pid)}
    parts = {"parent": memory(pid), "workers": [memory(c) for c in children(pid)]}
    every = [parts["parent"], *parts["workers"]]
    parts["total_rss_mib"] = round(sum(p["rss_mib"] for p in every), 1)
    if all("pss_mib" in p for p in every):
        parts["total_pss_mib"] = round(sum(p["pss_mib"] for p in every), 1)
    return parts


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used so far."""
    ticks = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def gateway_pids(proc: subprocess.Popen, workers: int) -> list[int]:
    return [proc.pid] if workers == 1 else [proc.pid, *children(proc.pid)]


def measure(proc: subprocess.Popen, workers: int, url: str, script: Path, args) -> dict:
    """Requests per second, and the gateway's CPU milliseconds per request."""
    pids = gateway_pids(proc, workers)
    before, started = cpu_seconds(pids), time.perf_counter()
    rate, requests = run_wrk(url, script, args.seconds, args.connections)
    used, wall = cpu_seconds(pids) - before, time.perf_counter() - started
    return {
        "rps": rate,
        "cpu_ms_per_request": round(1000 * used / max(requests, 1), 3),
        # how many cores the gateway got: what the machine's other work left it
        "cores_used": round(used / wall, 2),
    }


def run_wrk(url: str, script: Path, seconds: int, connections: int) -> tuple[float, int]:
    """wrk's requests per second and how many requests it completed."""
    out = subprocess.run(
        [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{seconds}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw failures:\n{out}")
    found = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not found or not count:
        raise SystemExit(f"no rate in wrk's output:\n{out}")
    return float(found.group(1)), int(count.group(1))


def start_gateway(
    tmp: Path, name: str, workers: int, upstream: str, index: Path, env: dict, policies: list[str]
) -> tuple[subprocess.Popen, int, int]:
    home = tmp / name
    home.mkdir()
    port, admin = free_port(), free_port()
    config = {
        "listeners": {"proxy": {"port": port}, "admin": {"port": admin}},
        "routes": [{"name": "default", "upstream": upstream}],
        "policies": policies,
        "store": {"url": f"sqlite:///{home / 'bench.db'}"},
        "data_dir": str(home / "data"),
        "indexes": {"sample": str(index)},
        "log_level": "warning",
    }
    (home / "gateway.yaml").write_text(json.dumps(config))
    cmd = [
        sys.executable,
        "-m",
        "gateway.cli",
        "serve",
        "--config",
        str(home / "gateway.yaml"),
        "--workers",
        str(workers),
    ]
    log = (home / "gateway.log").open("wb")
    proc = subprocess.Popen(cmd, cwd=home, env=env, stderr=log, stdout=subprocess.DEVNULL)
    return proc, port, admin


async def ready(admin: int, workers: int, proc: subprocess.Popen, data: Path) -> None:
    async with aiohttp.ClientSession() as session:
        await wait_up(session, f"http://127.0.0.1:{admin}/readyz", timeout=300)
    # the first worker answers /readyz; the others start once it listens
    deadline = time.time() + 300
    while len(list((data / "journal").glob("p*.lock"))) < workers:
        if time.time() > deadline or proc.poll() is not None:
            raise SystemExit(f"{workers} workers did not all start")
        await asyncio.sleep(0.2)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3, help="seconds of load before round 1")
    parser.add_argument(
        "--index-dir", type=Path, default=Path(tempfile.gettempdir()) / "gw-bench-workers-index"
    )
    parser.add_argument(
        "--phrases-only",
        action="store_true",
        help="policies/main.yaml alone (no copyright policy, no index loaded)",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench/workers.py needs wrk on the PATH (apt-get install wrk)")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    index = build_index(args.index_dir)
    policies = [str(ROOT / "policies" / "main.yaml")]
    if not args.phrases_only:
        policies.append(str(ROOT / "policies" / "copyright.yaml"))
    tmp = Path(tempfile.mkdtemp(prefix="gw-bench-workers-"))
    script = tmp / "chat.lua"
    body = json.dumps({"model": "bench", "messages": [{"role": "user", "content": QUESTION}]})
    script.write_text(WRK_SCRIPT.format(body=json.dumps(body)))
    up_port = free_port()
    upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(up_port), TEXT], env=env)
    procs = [upstream]
    try:
        gateways = {}
        for workers in (1, 2):
            proc, port, admin = start_gateway(
                tmp, f"w{workers}", workers, f"http://127.0.0.1:{up_port}", index, env, policies
            )
            procs.append(proc)
            await ready(admin, workers, proc, tmp / f"w{workers}" / "data")
            gateways[workers] = (proc, workers, f"http://127.0.0.1:{port}/v1/chat/completions")
        direct = f"http://127.0.0.1:{up_port}/v1/chat/completions"
        for _, _, url in gateways.values():
            run_wrk(url, script, args.warmup, args.connections)
        rounds = []
        load_before = os.getloadavg()[0]
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            got = {w: measure(*gateways[w], script, args) for w in order}
            rounds.append(
                {
                    "workers_1_rps": got[1]["rps"],
                    "workers_2_rps": got[2]["rps"],
                    "workers_1_cpu_ms_per_request": got[1]["cpu_ms_per_request"],
                    "workers_2_cpu_ms_per_request": got[2]["cpu_ms_per_request"],
                    "workers_1_cores_used": got[1]["cores_used"],
                    "workers_2_cores_used": got[2]["cores_used"],
                }
            )
        direct_rps, _ = run_wrk(direct, script, args.seconds, args.connections)
        memory_after = {f"workers_{w}": process_memory(p.pid, w) for p, w, _ in gateways.values()}
    finally:
        for proc in reversed(procs):
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)
    one = statistics.median(r["workers_1_rps"] for r in rounds)
    two = statistics.median(r["workers_2_rps"] for r in rounds)
    print(
        json.dumps(
            {
                "benchmark": "workers",
                "cores": len(os.sched_getaffinity(0)),
                "load_generator": f"wrk -t1 -c{args.connections}, keep-alive, non-streamed chat",
                "policies": [str(Path(p).relative_to(ROOT)) for p in policies],
                "response_chars": len(TEXT),
                "rounds": rounds,
                "seconds_per_measurement": args.seconds,
                "median_workers_1_rps": round(one, 1),
                "median_workers_2_rps": round(two, 1),
                "ratio_2_over_1": round(two / one, 3),
                "median_cpu_ms_per_request": {
                    f"workers_{w}": statistics.median(
                        r[f"workers_{w}_cpu_ms_per_request"] for r in rounds
                    )
                    for w in (1, 2)
                },
                # other work on the machine takes cores from the gateway: say how much
                "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
                "upstream_direct_rps": direct_rps,
                "memory_after_load": memory_after,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
