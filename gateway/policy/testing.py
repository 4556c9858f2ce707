"""``gateway policy test``: YAML cases beside the policies they test.

``x_test.yaml`` tests the policies of ``x.yaml`` (or the files its
``policies:`` key lists). Each case gives a text (and optionally sources, a
query, a route) and the expected action and breached policy ids. A case
PASSes, FAILs (the decision differs) or ERRORs (a policy crashed, or the case
itself is malformed). A malformed case spoils only itself: the other cases of
its file still run. Every result carries the case's ``file:line:col``.
"""

from __future__ import annotations

import asyncio
import base64
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError

from gateway.contract.detector import ImagePart
from gateway.contract.kind import Resources
from gateway.contract.policy import Action, Status
from gateway.errors import ConfigError, YamlSyntaxError
from gateway.policy.check import context_for, evaluate
from gateway.policy.loader import TEST_SUFFIX, load_policies
from gateway.strict import Strict
from gateway.yaml_source import load_source, sorted_by_position, validation_messages


class Expect(Strict):
    action: Action
    breached: list[str] = Field(default_factory=list)
    # the text the client would get (after redaction), when it matters
    text: str | None = None


class Case(Strict):
    name: str
    # the answer's text; an image case gives "" when the answer is only the image
    text: str
    # an image file (relative to the case file) in the answer, for image policies
    image: str | None = None
    sources: list[Any] | None = None
    query: str | None = None
    route: str = "default"
    # also feed the text in pieces of this many characters, as a stream would
    stream_chunk: int | None = Field(default=None, ge=1)
    expect: Expect


class CaseFile(Strict):
    policies: list[str] | None = None
    cases: list[Case] = Field(min_length=1)


class _CaseFileOutline(Strict):
    """``CaseFile`` with its cases left raw, to validate (and fail) one by one."""

    policies: list[str] | None = None
    cases: list[Any] = Field(min_length=1)


@dataclass
class CaseResult:
    file: str
    name: str
    outcome: Literal["PASS", "FAIL", "ERROR"]
    detail: str = ""
    # where the case starts in ``file`` (1:1 for problems of the whole file)
    line: int = 1
    col: int = 1

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


def test_files(paths: list[str | Path]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(
                sorted(
                    p
                    for p in path.iterdir()
                    if p.suffix in (".yaml", ".yml") and p.stem.endswith(TEST_SUFFIX)
                )
            )
        elif path.stem.endswith(TEST_SUFFIX):
            out.append(path)
        else:
            sibling = path.with_name(path.stem + TEST_SUFFIX + path.suffix)
            if sibling.exists():
                out.append(sibling)
    return out


def run_tests(paths: list[str | Path], resources: Resources | None = None) -> list[CaseResult]:
    return asyncio.run(_run(paths, resources or Resources()))


async def _run(paths: list[str | Path], resources: Resources) -> list[CaseResult]:
    results: list[CaseResult] = []
    for test_path in test_files(paths):
        results.extend(await _run_file(test_path, resources))
    return results


async def _run_file(test_path: Path, resources: Resources) -> list[CaseResult]:
    shown = str(test_path)
    try:
        source = load_source(test_path, keep_duplicates=True)
    except YamlSyntaxError as exc:
        return [CaseResult(shown, "<file>", "ERROR", "\n".join(exc.errors))]
    # a key written twice inside a case spoils that case; anywhere else, the file
    case_problems: dict[int, list[str]] = {}
    file_problems: list[str] = []
    for loc, message in source.duplicates:
        if len(loc) > 2 and loc[0] == "cases" and isinstance(loc[1], int):
            case_problems.setdefault(loc[1], []).append(message)
        else:
            file_problems.append(message)
    data = source.data if source.data is not None else {}
    try:
        outline = _CaseFileOutline.model_validate(data)
    except ValidationError as exc:
        file_problems.extend(validation_messages(source, exc, model=CaseFile, data=data))
        if any(err["type"] != "extra_forbidden" for err in exc.errors()):
            # no usable list of cases (or of policy files): nothing can run
            return [_file_error(shown, file_problems)]
        # only unknown top-level keys: say so, and run the cases all the same
        outline = _CaseFileOutline.model_validate(
            {k: v for k, v in data.items() if k in ("policies", "cases")}
        )
    results = [_file_error(shown, file_problems)] if file_problems else []
    if outline.policies:
        policy_paths = [test_path.parent / p for p in outline.policies]
    else:
        stem = test_path.stem[: -len(TEST_SUFFIX)]
        policy_paths = [test_path.with_name(stem + test_path.suffix)]
    try:
        policy_set = load_policies(policy_paths, resources=resources)
    except ConfigError as exc:
        return [*results, CaseResult(shown, "<policies>", "ERROR", "\n".join(exc.errors))]
    for index, raw in enumerate(outline.cases):
        base = ("cases", index)
        line, col = source.where(base)
        name = raw.get("name") if isinstance(raw, dict) else None
        label = name if isinstance(name, str) and name else f"cases[{index}]"
        problems = case_problems.get(index, [])
        try:
            case = Case.model_validate(raw)
        except ValidationError as exc:
            problems = problems + validation_messages(
                source, exc, base=base, label=f"cases.{index}", model=Case, data=raw
            )
        if problems:
            detail = "\n".join(sorted_by_position(problems))
            results.append(CaseResult(shown, label, "ERROR", detail, line, col))
            continue
        result = await _run_case(shown, case, policy_set)
        result.line, result.col = line, col
        results.append(result)
    return results


def _file_error(shown: str, problems: list[str]) -> CaseResult:
    return CaseResult(shown, "<file>", "ERROR", "\n".join(sorted_by_position(problems)))


async def _run_case(shown: str, case: Case, policy_set) -> CaseResult:
    policies = policy_set.for_route(case.route)
    chunks = [None] + ([case.stream_chunk] if case.stream_chunk else [])
    images: list[tuple[str, ImagePart]] = []
    if case.image is not None:
        try:
            raw = (Path(shown).parent / case.image).read_bytes()
        except OSError as exc:
            return CaseResult(shown, case.name, "ERROR", f"image {case.image}: {exc}")
        images.append(("image.0", ImagePart(case.image, base64.b64encode(raw).decode("ascii"))))
    segments = [("0", case.text)] if case.text or not images else []
    for chunk in chunks:
        ctx = context_for(case.route, query=case.query, sources=case.sources)
        guard = await evaluate(policies, segments, ctx, chunk=chunk, images=images)
        errors = [r for r in guard.results if r.status is Status.ERROR]
        mode = "streamed" if chunk else "whole"
        if errors:
            detail = "; ".join(f"{r.config.id}: {r.error}" for r in errors)
            return CaseResult(shown, case.name, "ERROR", f"({mode}) {detail}")
        problems = []
        action = guard.action()
        if action is not case.expect.action:
            problems.append(f"action {action.value}, expected {case.expect.action.value}")
        breached = sorted(guard.breached())
        if breached != sorted(case.expect.breached):
            problems.append(f"breached {breached}, expected {sorted(case.expect.breached)}")
        if case.expect.text is not None:
            got = guard.segments["0"].released_text if "0" in guard.segments else ""
            if got != case.expect.text:
                problems.append(f"text {got!r}, expected {case.expect.text!r}")
        if problems:
            return CaseResult(shown, case.name, "FAIL", f"({mode}) " + "; ".join(problems))
    return CaseResult(shown, case.name, "PASS")
