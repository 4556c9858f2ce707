"""JSON Schemas of the gateway's YAML files, and the ``gateway schema`` command.

The schemas are generated from the models the loaders validate with, so an
editor that reads them (yaml-language-server's ``$schema`` line) completes and
checks what the gateway itself accepts:

* ``policies``: a policy file. Its items are the union of every registered
  kind's config model (plugins' kinds included), chosen by ``kind``; the other
  top-level keys are the sections installed subsystems parse. A section is
  described by its parser's return annotation (``list[MonitorConfig]``), as
  the parser returns the section's items validated; a parser without one
  leaves its section open (any value).
* ``tests``: a policy test file (``*_test.yaml``).
* ``config``: ``gateway.yaml``.

What a model checks in code (a regex that must compile, a fallback route that
must exist) is beyond a schema: ``gateway policy validate`` still has the last
word.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Union

from pydantic import Field, create_model

from gateway.config import Settings
from gateway.policy.kinds import Registry, default_registry
from gateway.policy.loader import SectionParser, default_sections
from gateway.policy.testing import CaseFile
from gateway.strict import Strict

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def policies_schema(
    registry: Registry | None = None, sections: Mapping[str, SectionParser] | None = None
) -> dict[str, Any]:
    """The schema of a policy file, from the registered kinds and the subsystems' sections."""
    registry = registry or default_registry()
    sections = default_sections() if sections is None else sections
    configs = registry.configs()
    if not configs:
        raise ValueError("no policy kinds are registered")
    item: Any = configs[0]
    if len(configs) > 1:
        # a tuple subscript builds the union of however many kinds are installed
        item = Annotated[Union[tuple(configs)], Field(discriminator="kind")]  # noqa: UP007
    fields: dict[str, Any] = {
        "policies": (list[item], Field(default_factory=list, description="The policies."))
    }
    for name, parser in sections.items():
        fields[name] = (_section_type(parser), None)
    model = create_model("PolicyFile", __base__=Strict, **fields)
    schema = model.model_json_schema()
    # the optional sections default to "absent", not to null
    for name in sections:
        schema["properties"][name].pop("default", None)
    return _top(
        schema,
        "Gateway policy file",
        "Policies, and the sections subsystems read (see docs/policies.md).",
    )


def case_file_schema() -> dict[str, Any]:
    """The schema of a policy test file (``*_test.yaml``)."""
    return _top(
        CaseFile.model_json_schema(),
        "Gateway policy test file",
        "Cases run by `gateway policy test` (see docs/policies.md).",
    )


def config_schema() -> dict[str, Any]:
    """The schema of ``gateway.yaml``."""
    return _top(
        Settings.model_json_schema(),
        "Gateway configuration (gateway.yaml)",
        "Listeners, routes, policies, store, indexes and auth (see README.md).",
    )


# command argument -> (generator, file name under schemas/)
SCHEMAS: dict[str, tuple[Callable[[], dict[str, Any]], str]] = {
    "policies": (policies_schema, "policies.schema.json"),
    "tests": (case_file_schema, "policy-tests.schema.json"),
    "config": (config_schema, "gateway.schema.json"),
}


def render(schema: Mapping[str, Any]) -> str:
    """The schema as the shipped files hold it: stable, indented, one final newline."""
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def add_command(commands: argparse._SubParsersAction) -> None:
    """Add ``gateway schema WHICH`` to the ``gateway`` command."""
    cmd = commands.add_parser(
        "schema", help="print the JSON Schema of policy files, policy test files or gateway.yaml"
    )
    cmd.add_argument("which", choices=list(SCHEMAS))
    cmd.set_defaults(func=_cmd_schema)


def _cmd_schema(args: argparse.Namespace) -> int:
    generate, _ = SCHEMAS[args.which]
    sys.stdout.write(render(generate()))
    return 0


def _section_type(parser: SectionParser) -> Any:
    try:
        found = typing.get_type_hints(parser).get("return", Any)
    except Exception:
        # a callable object or an annotation that does not resolve says nothing
        return Any
    return Any if found is None or found is type(None) else found


def _top(schema: dict[str, Any], title: str, description: str) -> dict[str, Any]:
    schema.pop("title", None)
    schema.pop("description", None)
    return {"$schema": DIALECT, "title": title, "description": description, **schema}
