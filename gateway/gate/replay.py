"""Ask the candidate (and the baseline) every prompt, judge each answer, keep every result.

Each answer is judged as soon as it arrives and its result appended to
``results.jsonl`` in the output folder, one line per prompt and side, so a
run that was interrupted (a crash, Ctrl-C, a CI timeout) resumes where it
stopped with ``--resume``; answers that failed are asked again then. The
folder's ``run.json`` records what the results belong to (the prompt file's
hash, the upstreams, the policy revision, the route): resuming with any of
them changed is refused, since it would mix two experiments in one report.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from gateway.errors import BadRequest, ConfigError
from gateway.gate.prompts import Prompt, PromptSet
from gateway.policy.check import context_for, evaluate
from gateway.policy.loader import PolicySet
from gateway.proxy.adapters import CONVERSATIONS, Adapters, parse_answer
from gateway.retry import delay

# statuses worth asking again: the upstream is busy or failing, not refusing the prompt
RETRIED_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
EXCERPT_CHARS = 400


@dataclass(frozen=True)
class Upstream:
    """One side of the comparison: where to ask, in which protocol, with which key."""

    side: str
    url: str
    # a name of ``CONVERSATIONS``: how the upstream is asked
    protocol: str = "openai"
    api_key: str | None = None
    model: str = "gate"
    max_tokens: int = 1024

    def request(self, prompt: Prompt) -> tuple[str, dict[str, Any], dict[str, str]]:
        """URL, body and headers of the request that asks ``prompt``."""
        adapter = CONVERSATIONS[self.protocol]
        path, body, extra = adapter.ask(
            prompt.messages, prompt.model or self.model, self.max_tokens
        )
        base = self.url.rstrip("/")
        # a base URL given with its /v1 (as the SDKs take it) or without
        if base.endswith("/v1") and path.startswith("/v1/"):
            path = path[len("/v1") :]
        headers = {"content-type": "application/json", **extra}
        if self.api_key:
            header = adapter.credential_header
            headers[header] = (
                f"Bearer {self.api_key}" if header == "authorization" else self.api_key
            )
        return base + path, body, headers

    def describe(self) -> dict[str, Any]:
        # never the key: run.json and the report are shared; the rest says what was asked
        return {
            "url": self.url,
            "protocol": self.protocol,
            "model": self.model,
            "max_tokens": self.max_tokens,
        }


class ResultsFile:
    """``results.jsonl`` and ``run.json`` in the output folder."""

    def __init__(self, folder: Path, run: dict[str, Any], *, resume: bool) -> None:
        self.folder = folder
        self.path = folder / "results.jsonl"
        self.done: dict[tuple[str, str], dict[str, Any]] = {}
        folder.mkdir(parents=True, exist_ok=True)
        run_file = folder / "run.json"
        if resume:
            self._resume(run_file, run)
        elif self.path.exists() and self.path.stat().st_size:
            raise ConfigError(
                f"{self.path} holds an earlier run's results: pass --resume to finish that run, "
                "or choose another --out"
            )
        run_file.write_text(json.dumps(run, indent=2) + "\n")
        # appended line by line, flushed each time: what is written survives a crash
        self._fh = self.path.open("a", encoding="utf-8")

    def _resume(self, run_file: Path, run: dict[str, Any]) -> None:
        if not run_file.exists():
            raise ConfigError(f"{run_file}: nothing to resume (no earlier run in {self.folder})")
        earlier = json.loads(run_file.read_text())
        changed = [
            key for key in sorted(set(run) | set(earlier)) if run.get(key) != earlier.get(key)
        ]
        if changed:
            raise ConfigError(
                f"{run_file}: the earlier run differs in {', '.join(changed)}; "
                "resuming would mix two runs in one report (choose another --out)"
            )
        if self.path.exists():
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                # a crash cut the last line short: drop it, so the next one starts clean
                with self.path.open("r+b") as fh:
                    fh.truncate(raw.rfind(b"\n") + 1)
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue  # the line a crash cut short: that answer is asked again
                if record.get("status") == "ok":
                    self.done[(record["side"], record["id"])] = record

    def add(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        if record["status"] == "ok":
            self.done[(record["side"], record["id"])] = record

    def close(self) -> None:
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()

    def records(self) -> list[dict[str, Any]]:
        """The latest result of every prompt and side: the ``ok`` ones, then the last failures."""
        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            key = (record["side"], record["id"])
            if latest.get(key, {}).get("status") != "ok":
                latest[key] = record
        return list(latest.values())


Judge = Callable[[Prompt, dict[str, Any]], Awaitable[dict[str, Any]]]


def judge_with(policy_set: PolicySet, route: str) -> Judge:
    """Judge an answer body with every policy of ``route``, exactly as ``gateway check`` does."""
    adapters = Adapters([])
    policies = policy_set.for_route(route)

    async def judge(prompt: Prompt, answer: dict[str, Any]) -> dict[str, Any]:
        segments, found, _ = parse_answer(answer, adapters, route)
        ctx = context_for(route, query=prompt.query, sources=prompt.sources)
        ctx.sources.extend(found.items)
        ctx.source_errors.extend(found.errors)
        guard = await evaluate(policies, segments, ctx)
        verdicts = [v.to_json() for v in guard.verdicts()]
        return {
            "action": guard.action().value,
            "breached": guard.breached(),
            "errors": [v["id"] for v in verdicts if v["status"] == "error"],
            "evidence": {
                v["id"]: v.get("findings", []) for v in verdicts if v["status"] == "breach"
            },
            "answer": "\n".join(text for _, text in segments)[:EXCERPT_CHARS],
        }

    return judge


@dataclass
class Replay:
    prompts: PromptSet
    upstreams: list[Upstream]
    judge: Judge
    results: ResultsFile
    concurrency: int = 8
    retries: int = 3
    timeout: float = 120.0
    progress: bool = True
    # the first retry waits this long, doubling up to the cap (tenacity's jitter)
    backoff_first: float = 0.5
    backoff_cap: float = 10.0

    async def run(self) -> None:
        todo = [
            (upstream, prompt)
            for prompt in self.prompts.prompts
            for upstream in self.upstreams
            if (upstream.side, prompt.id) not in self.results.done
        ]
        gate = asyncio.Semaphore(self.concurrency)
        bar = tqdm(
            total=len(todo),
            unit="answer",
            file=sys.stderr,
            disable=not self.progress or None,
            desc="gate",
            dynamic_ncols=True,
        )
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def one(upstream: Upstream, prompt: Prompt) -> None:
                async with gate:
                    record = await self._ask_and_judge(session, upstream, prompt)
                self.results.add(record)
                bar.update(1)

            try:
                await asyncio.gather(*(one(u, p) for u, p in todo))
            finally:
                bar.close()

    async def _ask_and_judge(
        self, session: aiohttp.ClientSession, upstream: Upstream, prompt: Prompt
    ) -> dict[str, Any]:
        record: dict[str, Any] = {"side": upstream.side, "id": prompt.id}
        try:
            answer = await self._ask(session, upstream, prompt)
        except _Failed as exc:
            return {**record, "status": "error", "error": str(exc)}
        try:
            judged = await self.judge(prompt, answer)
        except BadRequest as exc:
            return {**record, "status": "error", "error": f"unreadable answer: {exc.message}"}
        return {**record, "status": "ok", **judged}

    async def _ask(
        self, session: aiohttp.ClientSession, upstream: Upstream, prompt: Prompt
    ) -> dict[str, Any]:
        attempts = 0
        while True:
            attempts += 1
            try:
                url, body, headers = upstream.request(prompt)
                async with session.post(url, json=body, headers=headers) as resp:
                    text = (await resp.read()).decode("utf-8", "replace")
                    if resp.status == 200:
                        try:
                            answer = json.loads(text)
                        except json.JSONDecodeError:
                            raise _Failed(f"{upstream.side}: the answer is not JSON") from None
                        if not isinstance(answer, dict):
                            raise _Failed(f"{upstream.side}: the answer is not a JSON object")
                        return answer
                    problem = f"{upstream.side}: HTTP {resp.status}: {text[:200]}"
                    if resp.status not in RETRIED_STATUSES:
                        raise _Failed(problem)
            except (TimeoutError, aiohttp.ClientError) as exc:
                problem = f"{upstream.side}: {type(exc).__name__}: {exc}"
            if attempts > self.retries:
                raise _Failed(f"{problem} (after {attempts} attempts)")
            await asyncio.sleep(delay(attempts, first=self.backoff_first, cap=self.backoff_cap))


class _Failed(Exception):
    """The upstream gave no usable answer to one prompt."""
