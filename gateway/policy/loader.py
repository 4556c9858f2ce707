"""Load policy files into a compiled, immutable ``PolicySet``.

Every error in every file is collected before anything is reported (as OPA
does), each as ``file:line:col: code: message``. A set that loads is complete:
its detectors are built, so serving it cannot fail on configuration.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gateway.errors import ConfigError
from gateway.policy.models import PolicyBase
from gateway.policy.registry import BuildContext, Registry, default_registry
from gateway.yaml_source import Source, YamlSyntaxError, load_source, validation_messages

TEST_SUFFIX = "_test"
# top-level keys a policy file may hold besides ``policies``; later sections
# (incident rules, monitors) are validated by the subsystems that own them
EXTRA_SECTIONS = ("monitors", "incident_rules")
# how each extra section is validated, so ``policy validate`` and a hot reload
# catch its errors too; "module:function" taking (file, raw value) pairs
SECTION_PARSERS = {
    "monitors": "gateway.incidents.monitors:parse_monitors",
    "incident_rules": "gateway.incidents.rules:parse_rules",
}


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
    resources: dict[str, Any] | None = None,
) -> PolicySet:
    """Validate and build every policy in ``paths``; raise ``ConfigError`` listing all errors."""
    registry = registry or default_registry()
    files = policy_files(paths)
    errors: list[str] = []
    compiled: list[CompiledPolicy] = []
    sections: dict[str, list[tuple[str, Any]]] = {}
    digest = hashlib.sha256()
    mtimes: dict[str, float] = {}
    seen_ids: dict[str, str] = {}
    if not files:
        raise ConfigError(
            "no policy files found", [f"{', '.join(map(str, paths))}: no policy files"]
        )
    for path in files:
        try:
            raw = path.read_bytes()
            mtimes[str(path)] = path.stat().st_mtime
        except OSError as exc:
            errors.append(f"{path}:1:1: unreadable: {exc.strerror or exc}")
            continue
        digest.update(str(path).encode() + b"\0" + raw + b"\0")
        try:
            source = load_source(path, raw.decode("utf-8"))
        except UnicodeDecodeError as exc:
            errors.append(f"{path}:1:1: invalid-encoding: not UTF-8 (byte {exc.start})")
            continue
        except YamlSyntaxError as exc:
            errors.extend(exc.errors)
            continue
        items, file_errors = _policy_items(source)
        errors.extend(file_errors)
        for name in EXTRA_SECTIONS:
            if isinstance(source.data, dict) and name in source.data:
                sections.setdefault(name, []).append((str(path), source.data[name]))
        ctx = BuildContext(base_dir=path.parent.resolve(), resources=resources or {})
        for index, item in items:
            policy, item_errors = _validate_item(source, index, item, registry)
            errors.extend(item_errors)
            if policy is None:
                continue
            if policy.id in seen_ids:
                errors.append(
                    source.error(
                        ("policies", index, "id"),
                        "duplicate-id",
                        f"policy id {policy.id!r} is already defined in {seen_ids[policy.id]}",
                    )
                )
                continue
            seen_ids[policy.id] = str(path)
            try:
                detector = registry.get(policy.kind).build(policy, ctx)
            except (ConfigError, ValueError, OSError) as exc:
                errors.append(
                    source.error(("policies", index), "build-failed", f"{policy.id}: {exc}")
                )
                continue
            compiled.append(CompiledPolicy(policy, detector, str(path)))
    for name, pairs in sections.items():
        module, _, function = SECTION_PARSERS[name].partition(":")
        try:
            getattr(importlib.import_module(module), function)(pairs)
        except ConfigError as exc:
            errors.extend(exc.errors)
    if errors:
        raise ConfigError(f"{len(errors)} error(s) in policy files", errors)
    return PolicySet(compiled, digest.hexdigest()[:12], mtimes, sections)


def _policy_items(source: Source) -> tuple[list[tuple[int, Any]], list[str]]:
    data = source.data
    if data is None:
        return [], [source.error((), "empty-file", "the file holds no policies")]
    if not isinstance(data, dict):
        return [], [source.error((), "invalid-type", "expected a mapping with a 'policies' list")]
    errors = [
        source.error(
            (key,),
            "unknown-field",
            f"{key} (allowed: policies, {', '.join(EXTRA_SECTIONS)})",
            at_key=True,
        )
        for key in data
        if key != "policies" and key not in EXTRA_SECTIONS
    ]
    policies = data.get("policies", [])
    if not isinstance(policies, list):
        errors.append(source.error(("policies",), "invalid-type", "policies: expected a list"))
        return [], errors
    return list(enumerate(policies)), errors


def _validate_item(
    source: Source, index: int, item: Any, registry: Registry
) -> tuple[PolicyBase | None, list[str]]:
    base = ("policies", index)
    if not isinstance(item, dict):
        return None, [source.error(base, "invalid-type", f"policies[{index}]: expected a mapping")]
    label = str(item.get("id") or f"policies[{index}]")
    kind = item.get("kind")
    if kind is None:
        return None, [
            source.error(base, "missing-field", f"{label}.kind: every policy needs a kind")
        ]
    if not isinstance(kind, str) or kind not in registry:
        known = ", ".join(registry.names())
        return None, [
            source.error(
                base + ("kind",), "unknown-kind", f"{label}.kind: {kind!r} (known: {known})"
            )
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
