"""Load policy files into a compiled, immutable ``PolicySet``.

Every error in every file is collected before anything is reported (as OPA
does), each as ``file:line:col: code: message``, sorted by position: a key
written twice, a duplicate id or a pattern that does not compile never hides
the other errors. A set that loads is complete:
its detectors are built, so serving it cannot fail on configuration.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.contract.kind import BuildContext, Resources
from gateway.contract.policy import PolicyBase
from gateway.errors import ConfigError, Diag, YamlSyntaxError
from gateway.plugins import SUBSYSTEMS, load_group
from gateway.policy.kinds import Registry, default_registry
from gateway.yaml_source import (
    Source,
    did_you_mean,
    load_source,
    sorted_by_position,
    validation_messages,
)

log = logging.getLogger(__name__)

TEST_SUFFIX = "_test"

# validates one top-level section of policy files, given (file, raw value)
# pairs in file order; raises ConfigError listing every problem
SectionParser = Callable[[list[tuple[str, Any]]], Any]


def sections_of(subsystems: Iterable[Any]) -> dict[str, SectionParser]:
    """The sections besides ``policies`` that ``subsystems`` (classes) parse."""
    out: dict[str, SectionParser] = {}
    for subsystem in subsystems:
        for section, parser in subsystem.policy_sections().items():
            if section == "policies" or section in out:
                raise ConfigError(
                    f"subsystem {subsystem.name} claims policy section {section!r} again"
                )
            out[section] = parser
    return out


@cache
def default_sections() -> Mapping[str, SectionParser]:
    """Sections that the installed subsystems (the ``gateway.subsystems`` group) parse."""
    return sections_of(cls for _, cls in load_group(SUBSYSTEMS))


@dataclass(frozen=True)
class CompiledPolicy:
    config: PolicyBase
    detector: Any
    file: str


@dataclass
class PolicySet:
    policies: list[CompiledPolicy]
    revision: str
    files: dict[str, float]
    # raw extra sections by name, in file order, with the file they came from
    sections: dict[str, list[tuple[str, Any]]] = field(default_factory=dict)
    _by_route: dict[str, list[CompiledPolicy]] = field(default_factory=dict, repr=False)

    def for_route(self, route: str) -> list[CompiledPolicy]:
        """Policies that apply to ``route`` (``off`` ones included, to record them)."""
        hit = self._by_route.get(route)
        if hit is None:
            hit = [p for p in self.policies if p.config.applies_to(route)]
            self._by_route[route] = hit
        return hit

    def get(self, policy_id: str) -> CompiledPolicy | None:
        return next((p for p in self.policies if p.config.id == policy_id), None)


def policy_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories into the policy files they hold, sorted.

    Test-case files (``*_test.yaml``) sit beside policies and are skipped.
    """
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
            out.extend(p for p in found if not p.stem.endswith(TEST_SUFFIX))
        else:
            out.append(path)
    return out


def load_policies(
    paths: Iterable[str | Path],
    *,
    registry: Registry | None = None,
    resources: Resources | None = None,
    sections: Mapping[str, SectionParser] | None = None,
) -> PolicySet:
    """Validate and build every policy in ``paths``; raise ``ConfigError`` listing all errors."""
    registry = registry or default_registry()
    sections = default_sections() if sections is None else sections
    resources = resources if resources is not None else Resources()
    paths = list(paths)
    try:
        files = policy_files(paths)
    except OSError as exc:
        # a directory that vanished or may not be listed between two looks
        where = exc.filename or ", ".join(map(str, paths))
        problem = exc.strerror or str(exc)
        raise ConfigError(
            "policy files cannot be listed", [f"{where}:1:1: {Diag.UNREADABLE}: {problem}"]
        ) from None
    errors: list[str] = []
    compiled: list[CompiledPolicy] = []
    found: dict[str, list[tuple[str, Any]]] = {}
    digest = hashlib.sha256()
    mtimes: dict[str, float] = {}
    # policy id -> where it was first defined (file:line:col)
    seen_ids: dict[str, str] = {}
    # the first file holding each section, to place a parser's unexpected failure
    section_sources: dict[str, Source] = {}
    if not files:
        raise ConfigError(
            "no policy files found", [f"{', '.join(map(str, paths))}: no policy files"]
        )
    for path in files:
        try:
            raw = path.read_bytes()
            mtimes[str(path)] = path.stat().st_mtime
        except OSError as exc:
            errors.append(f"{path}:1:1: {Diag.UNREADABLE}: {exc.strerror or exc}")
            continue
        digest.update(str(path).encode() + b"\0" + raw + b"\0")
        try:
            source = load_source(path, raw, keep_duplicates=True)
        except YamlSyntaxError as exc:
            errors.extend(exc.errors)
            continue
        errors.extend(line for _, line in source.duplicates)
        items, file_errors = _policy_items(source, sections)
        errors.extend(file_errors)
        for name in sections:
            if isinstance(source.data, dict) and name in source.data:
                found.setdefault(name, []).append((str(path), source.data[name]))
                section_sources.setdefault(name, source)
        ctx = BuildContext(base_dir=path.parent.resolve(), resources=resources)
        for index, item in items:
            policy, item_errors = _validate_item(source, index, item, registry)
            errors.extend(item_errors)
            # taken from the raw item, so a policy with other errors still
            # claims (or clashes on) its id in the same run
            raw_id = item.get("id") if isinstance(item, dict) else None
            if isinstance(raw_id, str):
                first = seen_ids.get(raw_id)
                if first is not None:
                    errors.append(
                        source.error(
                            ("policies", index, "id"),
                            Diag.DUPLICATE_ID,
                            f'policy id "{raw_id}" is already defined at {first}',
                        )
                    )
                    continue
                seen_ids[raw_id] = source.place(("policies", index, "id"))
            if policy is None:
                continue
            try:
                detector = registry.get(policy.kind).build(policy, ctx)
            except (ConfigError, ValueError, OSError) as exc:
                errors.append(
                    source.error(("policies", index), Diag.BUILD_FAILED, f"{policy.id}: {exc}")
                )
                continue
            except Exception as exc:
                # a detector factory that breaks on a value it accepted is a bug,
                # but it must not take the whole load (or a hot reload) with it
                log.exception("building policy %s failed", policy.id)
                errors.append(
                    source.error(
                        ("policies", index),
                        Diag.BUILD_FAILED,
                        f"{policy.id}: {type(exc).__name__}: {exc}",
                    )
                )
                continue
            compiled.append(CompiledPolicy(policy, detector, str(path)))
    for name, pairs in found.items():
        try:
            sections[name](pairs)
        except ConfigError as exc:
            errors.extend(exc.errors)
        except Exception as exc:
            log.exception("parsing the %s section failed", name)
            errors.append(
                section_sources[name].error(
                    (name,), Diag.INVALID_VALUE, f"{name}: {type(exc).__name__}: {exc}"
                )
            )
    if errors:
        raise ConfigError(f"{len(errors)} error(s) in policy files", sorted_by_position(errors))
    return PolicySet(compiled, digest.hexdigest()[:12], mtimes, found)


def _policy_items(
    source: Source, sections: Mapping[str, SectionParser]
) -> tuple[list[tuple[int, Any]], list[str]]:
    data = source.data
    if data is None:
        return [], [source.error((), Diag.EMPTY_FILE, "the file holds no policies")]
    if not isinstance(data, dict):
        return [], [
            source.error((), Diag.INVALID_TYPE, "expected a mapping with a 'policies' list")
        ]
    errors = [
        source.error(
            (key,),
            Diag.UNKNOWN_FIELD,
            f"{key} (allowed: {', '.join(['policies', *sections])})",
            at_key=True,
        )
        for key in data
        if key != "policies" and key not in sections
    ]
    policies = data.get("policies", [])
    if not isinstance(policies, list):
        errors.append(source.error(("policies",), Diag.INVALID_TYPE, "policies: expected a list"))
        return [], errors
    return list(enumerate(policies)), errors


def _validate_item(
    source: Source, index: int, item: Any, registry: Registry
) -> tuple[PolicyBase | None, list[str]]:
    base = ("policies", index)
    if not isinstance(item, dict):
        return None, [
            source.error(base, Diag.INVALID_TYPE, f"policies[{index}]: expected a mapping")
        ]
    label = str(item.get("id") or f"policies[{index}]")
    kind = item.get("kind")
    if kind is None:
        return None, [
            source.error(base, Diag.MISSING_FIELD, f"{label}.kind: every policy needs a kind")
        ]
    if not isinstance(kind, str) or kind not in registry:
        hint = did_you_mean(kind, registry.names()) or f" (known: {', '.join(registry.names())})"
        return None, [
            source.error(base + ("kind",), Diag.UNKNOWN_KIND, f"{label}.kind: {kind!r}{hint}")
        ]
    model = registry.get(kind).config
    try:
        return model.model_validate(item), []
    except ValidationError as exc:
        return None, validation_messages(
            source, exc, base=base, label=label, model=model, data=item
        )


def check_files(paths: Iterable[str | Path], registry: Registry | None = None) -> list[str]:
    """All errors in ``paths`` (empty when valid), building detectors too."""
    try:
        load_policies(paths, registry=registry)
    except ConfigError as exc:
        return exc.errors
    return []
