"""JSON Schemas of the YAML files: current, complete, and as permissive as the loaders.

The shipped files under ``schemas/`` must equal what ``gateway schema`` prints
now; every shipped YAML that the gateway reads carries the
yaml-language-server ``$schema`` line and validates against its schema, and
so does every policy file, test file or config shown in the docs.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from pydantic import Field, ValidationError

from gateway.cli import main
from gateway.config import Settings
from gateway.contract.kind import PolicyKind
from gateway.contract.policy import PolicyBase
from gateway.errors import ConfigError
from gateway.gate.thresholds import Thresholds
from gateway.policy.kinds import Registry, default_registry
from gateway.policy.loader import default_sections, load_policies
from gateway.policy.schema import SCHEMAS, case_file_schema, config_schema, policies_schema
from gateway.strict import Strict

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_DIR = ROOT / "schemas"
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)$")


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def problems(schema: dict[str, Any], document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
        for e in validator(schema).iter_errors(document)
    ]


@pytest.fixture(scope="module")
def schemas() -> dict[str, dict[str, Any]]:
    return {which: generate() for which, (generate, _) in SCHEMAS.items()}


# --- the shipped schema files are what the command prints --------------------------


@pytest.mark.parametrize("which", list(SCHEMAS))
def test_shipped_schema_is_what_the_command_prints(which, capsys):
    _, name = SCHEMAS[which]
    assert main(["schema", which]) == 0
    printed = capsys.readouterr().out
    shipped = SCHEMA_DIR / name
    assert shipped.exists(), f"schemas/{name} is missing: gateway schema {which} > schemas/{name}"
    assert shipped.read_text(encoding="utf-8") == printed, (
        f"schemas/{name} is stale; regenerate it with: gateway schema {which} > schemas/{name}"
    )
    schema = json.loads(printed)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"


def test_an_unknown_schema_name_is_refused(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["schema", "polices"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


# --- shipped YAML --------------------------------------------------------------------

# which schema a shipped YAML file follows, by where it lives (first match wins)
SHIPPED_RULES: list[tuple[str, str | None]] = [
    ("policies/*_test.yaml", "tests"),
    ("bench/policies/*_test.yaml", "tests"),
    ("policies/*.yaml", "policies"),
    ("bench/policies/*.yaml", "policies"),
    ("gateway*.example.yaml", "config"),
    ("gateway.yaml", None),  # a local configuration, never committed
    # formats of their own, read by a detector or by other software, not by the loaders
    ("policies/data/*.yaml", None),  # data a policy reads (the source registry)
    ("gateway/detectors/lexicons/*.yaml", None),  # bias lexicons
    ("deploy/**/*.yaml", None),  # Prometheus rules, Kubernetes manifests, compose templates
    ("deploy/**/*.yml", None),  # Prometheus's and Grafana's own configuration
    ("docker-compose.yml", None),  # the Compose file format
]

# not shipped: environments, caches, state, build output, and the tests' own files
SKIPPED_DIRS = {".git", ".venv", "node_modules", ".gateway", "tests", "build", "dist"}


def shipped_yaml() -> list[Path]:
    out = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.startswith((".", "_"))]
        dirs[:] = [d for d in dirs if not d.endswith(".egg-info")]
        rel = Path(folder).relative_to(ROOT)
        out.extend(rel / f for f in files if f.endswith((".yaml", ".yml")))
    return sorted(out)


def schema_of(rel: Path) -> str | None:
    for pattern, which in SHIPPED_RULES:
        if _matches(rel, pattern):
            return which
    raise AssertionError(
        f"{rel}: no rule says which schema it follows; add it to SHIPPED_RULES "
        "(None for a file the gateway's loaders do not read)"
    )


def _matches(rel: Path, pattern: str) -> bool:
    # a glob over the whole relative path ("**/" spans directories); Path.full_match
    # does this from Python 3.13 on
    regex = re.escape(pattern).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
    return re.fullmatch(regex, rel.as_posix()) is not None


def shipped_with_schema() -> list[tuple[Path, str]]:
    return [(rel, which) for rel in shipped_yaml() if (which := schema_of(rel)) is not None]


def test_the_shipped_files_are_found():
    found = {which for _, which in shipped_with_schema()}
    assert found == {"policies", "tests", "config"}
    assert Path("gateway.example.yaml") in {rel for rel, _ in shipped_with_schema()}


@pytest.mark.parametrize(("rel", "which"), shipped_with_schema(), ids=str)
def test_shipped_yaml_names_its_schema_and_validates(rel, which, schemas):
    path = ROOT / rel
    first = path.read_text(encoding="utf-8").splitlines()[0]
    mode = MODELINE.match(first)
    expected = SCHEMA_DIR / SCHEMAS[which][1]
    assert mode, (
        f"{rel}: the first line must be "
        f"'# yaml-language-server: $schema={_relative(expected, path.parent)}'"
    )
    assert (path.parent / mode.group(1)).resolve() == expected.resolve(), (
        f"{rel}: $schema={mode.group(1)} is not {_relative(expected, path.parent)}"
    )
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert problems(schemas[which], document) == []
    if which == "config":
        Settings.model_validate(document)


def _relative(target: Path, start: Path) -> str:
    return os.path.relpath(target, start).replace(os.sep, "/")


# --- YAML in the docs ----------------------------------------------------------------

FENCE = re.compile(r"^```yaml\n(.*?)^```", re.MULTILINE | re.DOTALL)

# blocks that are neither a policy file, a test file nor gateway.yaml (or a part of
# one), by file and first key, with why they are not checked here
NOT_CHECKED = {
    ("docs/bias.md", "attribute"): "a bias lexicon, a format the bias detector reads itself",
    ("docs/observability.md", "scrape_configs"): "Prometheus's own configuration",
}


def docs_blocks() -> list[tuple[str, int, Any]]:
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            out.append((doc.relative_to(ROOT).as_posix(), line, yaml.safe_load(match.group(1))))
    return out


def classify(doc: str, data: Any) -> str | None:
    """Which schema a block follows: a whole file, or ``config-part`` for sections of one."""
    assert isinstance(data, dict) and data, f"{doc}: a yaml block that is not a mapping"
    keys = set(data)
    if (doc, next(iter(data))) in NOT_CHECKED:
        return None
    if keys <= {"policies", *default_sections()}:
        return "policies"
    if "cases" in keys:
        return "tests"
    if "routes" in keys:
        return "config"
    if doc == "docs/gate.md" and keys <= set(Thresholds.model_fields):
        return "gate"
    if keys <= set(Settings.model_fields):
        # sections of gateway.yaml shown on their own: checked with a route added,
        # the one key every config needs
        return "config-part"
    raise AssertionError(f"{doc}: cannot tell which file this block belongs to: {sorted(keys)}")


def test_the_docs_show_every_kind_of_file():
    seen = {classify(doc, data) for doc, _, data in docs_blocks()}
    assert {"policies", "tests", "config", "config-part"} <= seen


@pytest.mark.parametrize(
    ("doc", "line", "data"), docs_blocks(), ids=lambda v: str(v) if isinstance(v, str | int) else ""
)
def test_docs_yaml_example_validates(doc, line, data, schemas):
    which = classify(doc, data)
    if which is None:
        pytest.skip(NOT_CHECKED[(doc, next(iter(data)))])
    if which == "gate":
        # ``gateway gate --thresholds``: no schema file of its own, its model checks it
        Thresholds.model_validate(data)
        return
    if which == "config-part":
        which, data = "config", {"routes": [{"name": "r", "upstream": "http://u"}], **data}
    assert problems(schemas[which], data) == [], f"{doc}:{line}"
    if which == "config":
        # what a schema cannot say (a fallback's upstream differs) the model checks
        Settings.model_validate(data)


# --- the schemas follow the models, plugins included --------------------------------


class ShoutingPolicy(PolicyBase):
    kind: Literal["shouting"]
    max_caps_share: float = Field(default=0.5, gt=0, le=1)


def _build(config: Any, ctx: Any) -> Any:
    raise NotImplementedError


def test_every_registered_kind_is_in_the_policies_schema(schemas):
    items = schemas["policies"]["properties"]["policies"]["items"]
    assert sorted(items["discriminator"]["mapping"]) == default_registry().names()


def test_a_plugin_kind_appears_in_the_schema():
    registry = Registry()
    for name in default_registry().names():
        registry.register(default_registry().get(name))
    registry.register(PolicyKind("shouting", ShoutingPolicy, _build))
    schema = policies_schema(registry)
    shout = {"id": "no-shouting", "kind": "shouting", "max_caps_share": 0.3}
    assert problems(schema, {"policies": [shout]}) == []
    assert problems(schema, {"policies": [{**shout, "max_caps_share": 2}]})
    assert problems(schema, {"policies": [{**shout, "max_caps": 0.3}]})
    # the schema without the plugin refuses its kind, as the loader would
    assert problems(policies_schema(), {"policies": [shout]})


class Section(Strict):
    name: str


def _typed(pairs: list[tuple[str, Any]]) -> list[Section]:
    return []


def _untyped(pairs):
    return pairs


def test_a_section_is_described_by_its_parsers_return_type():
    schema = policies_schema(sections={"typed": _typed, "free": _untyped})
    assert set(schema["properties"]) == {"policies", "typed", "free"}
    assert problems(schema, {"typed": [{"name": "a"}], "free": {"anything": [1]}}) == []
    assert problems(schema, {"typed": [{"name": "a", "extra": 1}]})
    assert problems(schema, {"other": []})


def test_the_built_in_sections_are_described(schemas):
    props = schemas["policies"]["properties"]
    assert set(props) == {"policies", *default_sections()}
    assert props["monitors"]["items"] and props["incident_rules"]["items"]


# --- the schemas accept what the loaders accept, and refuse what they refuse -------

COMMON = {
    "id": "p.1_x-y",
    "kind": "length",
    "max_chars": 10,
    "mode": "monitor",
    "routes": ["chat"],
    "action": "redact",
    "severity": "critical",
    "on_error": "allow",
    "message": "m",
    "error_response": True,
    "redact_with": "",
    "timeout_ms": 60000,
    "review": {"mode": "wait", "wait_seconds": 300, "sla": 5, "expire_action": "approve"},
}
RULE = {"id": "r", "source": "policy"}
MONITOR = {"id": "m", "score": {"path": "s"}, "rules": {"score_drift": {"method": "ks"}}}

POLICY_FILES = [
    ("minimal", {"policies": [{"id": "p", "kind": "phrases", "phrases": ["x"]}]}),
    ("no policies, only a section", {"incident_rules": []}),
    ("empty mapping", {}),
    ("every common field", {"policies": [COMMON]}),
    ("misspelt field", {"policies": [{"id": "p", "kind": "phrases", "phrasse": ["x"]}]}),
    ("unknown kind", {"policies": [{"id": "p", "kind": "phrase"}]}),
    ("no kind", {"policies": [{"id": "p"}]}),
    ("bad id", {"policies": [{"id": "Has Spaces", "kind": "length", "max_chars": 3}]}),
    ("bad action", {"policies": [{"id": "p", "kind": "length", "action": "redcat"}]}),
    ("timeout too long", {"policies": [{**COMMON, "timeout_ms": 60001}]}),
    ("wait too long", {"policies": [{**COMMON, "review": {"wait_seconds": 301}}]}),
    ("unknown top-level key", {"policies": [], "polices": []}),
    ("policies not a list", {"policies": {"id": "p"}}),
    ("incident rule", {"incident_rules": [{**RULE, "severity": "sev2"}]}),
    ("incident rule, bad source", {"incident_rules": [{**RULE, "source": "policies"}]}),
    ("incident rule, bad severity", {"incident_rules": [{**RULE, "severity": "SEV5"}]}),
    ("monitor", {"monitors": [MONITOR]}),
    ("monitor, window too small", {"monitors": [{**MONITOR, "window": 1}]}),
]


@pytest.mark.parametrize(("name", "document"), POLICY_FILES, ids=[n for n, _ in POLICY_FILES])
def test_policies_schema_agrees_with_the_loader(name, document, tmp_path, schemas):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(document), encoding="utf-8")
    try:
        load_policies([path])
        loader_errors: list[str] = []
    except ConfigError as exc:
        loader_errors = exc.errors
    assert (problems(schemas["policies"], document) == []) == (loader_errors == []), (
        loader_errors or "the loader accepts it"
    )


ROUTE = {"name": "r", "upstream": "https://u.example"}


def contained(**switches: Any) -> dict[str, Any]:
    return {"routes": [{**ROUTE, "containment": switches}]}


SLACK = {"name": "s", "type": "slack", "url_env": "X", "min_severity": "SEV2"}

CONFIGS = [
    ("minimal", {"routes": [ROUTE]}),
    ("no routes", {"listeners": {"proxy": {"port": 1}}}),
    ("empty routes", {"routes": []}),
    ("misspelt key", {"routes": [ROUTE], "listener": {}}),
    ("severity spellings", contained(block_on="sev1", review_all_on=2, fallback_on=None)),
    ("policy severity for an incident", contained(block_on="High")),
    ("severity out of range", contained(block_on="SEV5")),
    ("severity number out of range", contained(block_on=5)),
    ("port out of range", {"routes": [ROUTE], "listeners": {"admin": {"port": 70000}}}),
    ("unknown protocol", {"routes": [{**ROUTE, "protocol": "openapi"}]}),
    ("review SLA keys", {"routes": [ROUTE], "review": {"sla": {"high": 60}}}),
    ("unknown review SLA key", {"routes": [ROUTE], "review": {"sla": {"urgent": 60}}}),
    ("log level", {"routes": [ROUTE], "log_level": "verbose"}),
    ("sink", {"routes": [ROUTE], "incidents": {"sinks": [SLACK]}}),
    ("unknown sink type", {"routes": [ROUTE], "incidents": {"sinks": [{**SLACK, "type": "x"}]}}),
]


@pytest.mark.parametrize(("name", "document"), CONFIGS, ids=[n for n, _ in CONFIGS])
def test_config_schema_agrees_with_the_model(name, document, schemas):
    try:
        Settings.model_validate(document)
        accepted = True
    except ValidationError:
        accepted = False
    assert (problems(schemas["config"], document) == []) == accepted


def test_the_test_file_schema_follows_the_case_model(schemas):
    case = {"name": "c", "text": "t", "expect": {"action": "allow"}}
    assert problems(schemas["tests"], {"cases": [case]}) == []
    assert problems(schemas["tests"], {"cases": []})
    assert problems(schemas["tests"], {"cases": [{**case, "expect": {"action": "allow!"}}]})
    assert problems(schemas["tests"], {"cases": [{**case, "stream_chunk": 0}]})


def test_generated_schemas_are_stable():
    assert policies_schema() == policies_schema()
    assert config_schema() == config_schema()
    assert case_file_schema() == case_file_schema()
