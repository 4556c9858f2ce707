"""The shape of the code: protocol knowledge in the adapters, ports between the proxy and
its subsystems, and every error code declared once, in ``gateway/errors.py``, and documented.

Each check reads the source (text or ``ast``) and fails naming the file and line.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway
from gateway import errors
from gateway.errors import Diag, GatewayError

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "gateway"
ADAPTERS = PACKAGE / "proxy" / "adapters"
ERRORS_MODULE = PACKAGE / "errors.py"
ERRORS_DOC = ROOT / "docs" / "errors.md"

EXPECTED_PROTOCOLS = {
    "openai-chat",
    "openai-completions",
    "openai-responses",
    "openai-images",
    "anthropic-messages",
    "rag-json",
}

# Places outside the adapters that may spell a protocol id, each with why. Keyed by
# file and the exact stripped line, so any other use in the same file still fails.
PROTOCOL_ID_ALLOWED = {
    # the values a route's ``protocol:`` setting accepts in gateway.yaml; the config
    # layer sits below the proxy and cannot import the adapters' ids
    ("gateway/config.py", 'Protocol = Literal["auto", "openai", "anthropic", "rag-json"]'),
}


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def sources(under: Path = PACKAGE) -> list[Path]:
    return sorted(under.rglob("*.py"))


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_the_scans_see_the_whole_package():
    files = {rel(p) for p in sources()}
    # a scan over nothing passes whatever the code does
    assert len(files) > 50
    for expected in (
        "gateway/proxy/exchange.py",
        "gateway/proxy/listener.py",
        "gateway/review/service.py",
        "gateway/incidents/service.py",
        "gateway/errors.py",
    ):
        assert expected in files


# -- (a) protocol knowledge lives in proxy/adapters/ -----------------------------------------------
def adapter_protocols() -> dict[str, str]:
    """``protocol`` id -> adapter class, read from the adapter modules themselves."""
    from gateway.proxy.adapters.base import Adapter

    found: dict[str, str] = {}
    for path in sorted(ADAPTERS.glob("*.py")):
        module = importlib.import_module(module_name(path))
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if not issubclass(cls, Adapter) or cls is Adapter or cls.__module__ != module.__name__:
                continue
            protocol = cls.__dict__.get("protocol")
            if isinstance(protocol, str):
                found[protocol] = cls.__qualname__
    return found


def test_every_adapter_declares_its_protocol_id():
    assert set(adapter_protocols()) == EXPECTED_PROTOCOLS


def outside_adapters() -> list[Path]:
    return [p for p in sources() if ADAPTERS not in p.parents]


def test_no_module_outside_the_adapters_names_a_protocol_id():
    ids = sorted(adapter_protocols(), key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(i) for i in ids))
    found = []
    for path in outside_adapters():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            match = pattern.search(line)
            if match and (rel(path), line.strip()) not in PROTOCOL_ID_ALLOWED:
                found.append(f"{rel(path)}:{number}: {match.group()!r}: {line.strip()}")
    assert not found, "protocol ids outside gateway/proxy/adapters/:\n" + "\n".join(found)


def test_the_protocol_id_allowlist_is_still_needed():
    stale = []
    for file, line in PROTOCOL_ID_ALLOWED:
        lines = {text.strip() for text in (ROOT / file).read_text(encoding="utf-8").splitlines()}
        if line not in lines:
            stale.append(f"{file}: {line}")
    assert not stale, "allowlisted lines that no longer exist:\n" + "\n".join(stale)


def names_protocol(node: ast.AST) -> bool:
    """``protocol``, ``x.protocol``, ``self.info.protocol``…"""
    if isinstance(node, ast.Name):
        return node.id == "protocol"
    if isinstance(node, ast.Attribute):
        return node.attr == "protocol"
    return False


def protocol_comparisons(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(names_protocol(o) for o in operands):
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith") and names_protocol(node.func.value):
                yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Match) and names_protocol(node.subject):
            yield node.lineno, f"match {ast.unparse(node.subject)}"


COMPARISON = re.compile(r"protocol\s*(==|!=|\bnot\s+in\b|\bin\b)")


def code_lines(path: Path) -> dict[int, str]:
    """Each line's code, without comments or string literals (docstrings included)."""
    out: dict[int, str] = {}
    with path.open("rb") as fh:
        for tok in tokenize.tokenize(fh.readline):
            if tok.type in (tokenize.COMMENT, tokenize.STRING, tokenize.ENCODING):
                continue
            if tok.type in (tokenize.NL, tokenize.NEWLINE):
                continue
            out[tok.start[0]] = out.get(tok.start[0], "") + " " + tok.string
    return out


def test_no_module_outside_the_adapters_compares_protocols():
    found = set()
    for path in outside_adapters():
        for number, text in protocol_comparisons(parse(path)):
            found.add(f"{rel(path)}:{number}: {text}")
        # the same in plain text, as a second net under the ast check
        for number, code in code_lines(path).items():
            if COMPARISON.search(code):
                found.add(f"{rel(path)}:{number}: {code.strip()}")
    assert not found, "protocol comparisons outside gateway/proxy/adapters/:\n" + "\n".join(
        sorted(found)
    )


def test_the_protocol_checks_catch_a_comparison(tmp_path):
    source = (
        "if adapter.protocol == 'x':\n    pass\n"
        "ok = protocol in ('a', 'b')  # protocol == ignored in comments\n"
        "s = item.protocol.startswith('openai')\n"
        "match record.protocol:\n    case _:\n        pass\n"
        "doc = 'the protocol in use'\n"
    )
    assert sorted(line for line, _ in protocol_comparisons(ast.parse(source))) == [1, 3, 4, 5]
    path = tmp_path / "probe.py"
    path.write_text(source, encoding="utf-8")
    hits = [n for n, code in code_lines(path).items() if COMPARISON.search(code)]
    assert hits == [1, 3]
    assert COMPARISON.search("x = protocol not in known")
    assert not COMPARISON.search("adapter = by_protocol[name]")


# -- (b) ports: the proxy never imports a subsystem, nor they its internals ------------------------
def resolve(path: Path, node: ast.ImportFrom, root: Path) -> str:
    if not node.level:
        return node.module or ""
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package.pop()
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(path: Path, root: Path = ROOT) -> Iterator[tuple[int, str]]:
    """Every module ``path`` imports, anywhere in it (functions and TYPE_CHECKING included)."""
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = resolve(path, node, root)
            yield node.lineno, base
            # ``from gateway import review`` imports gateway.review
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, (ast.Attribute, ast.Name))
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def forbidden_imports(under: str, banned: tuple[str, ...]) -> list[str]:
    found = []
    for path in sources(PACKAGE / under):
        for number, name in imports(path):
            if any(name == b or name.startswith(b + ".") for b in banned):
                found.append(f"{rel(path)}:{number}: imports {name}")
    return sorted(set(found))


SUBSYSTEMS = ("gateway.review", "gateway.incidents", "gateway.monitors", "gateway.index_service")
PROXY_INTERNALS = ("gateway.proxy.exchange", "gateway.proxy.listener")


def test_the_proxy_imports_no_subsystem():
    found = forbidden_imports("proxy", SUBSYSTEMS)
    assert not found, "gateway/proxy/ must reach subsystems through its ports:\n" + "\n".join(found)


@pytest.mark.parametrize("subsystem", ["review", "incidents"])
def test_subsystems_do_not_import_the_proxys_internals(subsystem):
    found = forbidden_imports(subsystem, PROXY_INTERNALS)
    assert not found, f"gateway/{subsystem}/ reaches into the data path:\n" + "\n".join(found)


def test_the_import_scan_sees_every_kind_of_import(tmp_path):
    pkg = tmp_path / "gateway" / "proxy"
    pkg.mkdir(parents=True)
    probe = pkg / "probe.py"
    probe.write_text(
        "import gateway.review.store\n"
        "from gateway import incidents\n"
        "from ..monitors import windows\n"
        "def late():\n"
        "    from gateway.index_service.subsystem import IndexService\n"
        "    importlib.import_module('gateway.review')\n",
        encoding="utf-8",
    )
    names = {name for _, name in imports(probe, root=tmp_path)}
    assert "gateway.review.store" in names
    assert "gateway.incidents" in names
    assert "gateway.monitors.windows" in names
    assert "gateway.index_service.subsystem" in names
    assert "gateway.review" in names


# -- (c) errors: declared once, in gateway/errors.py, and documented -------------------------------
def import_every_gateway_module() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(gateway.__path__, "gateway."):
        importlib.import_module(info.name)
        names.append(info.name)
    return names


def all_subclasses(cls: type) -> set[type]:
    out: set[type] = set()
    pending = [cls]
    while pending:
        for sub in pending.pop().__subclasses__():
            if sub not in out:
                out.add(sub)
                pending.append(sub)
    return out


def gateway_error_classes() -> list[type[GatewayError]]:
    import_every_gateway_module()
    found = [GatewayError, *all_subclasses(GatewayError)]
    # classes a test module defines are not the gateway's
    return sorted(
        (c for c in found if c.__module__.split(".")[0] == "gateway"),
        key=lambda c: c.__qualname__,
    )


def test_every_gateway_module_was_imported():
    names = import_every_gateway_module()
    assert {module_name(p) for p in sources()} <= set(names) | {"gateway"}


def test_every_error_class_is_defined_in_gateway_errors():
    outside = [
        f"{c.__module__}.{c.__qualname__}"
        for c in gateway_error_classes()
        if c.__module__ != "gateway.errors"
    ]
    assert not outside, "GatewayError subclasses defined outside gateway/errors.py: " + ", ".join(
        outside
    )
    # and errors.error_classes() lists them all
    listed = {c for c in errors.error_classes() if c.__module__.split(".")[0] == "gateway"}
    assert set(gateway_error_classes()) == listed


def declared_codes() -> dict[str, list[str]]:
    codes: dict[str, list[str]] = {}
    for cls in gateway_error_classes():
        if "code" in cls.__dict__:
            codes.setdefault(cls.__dict__["code"], []).append(cls.__qualname__)
    return codes


KEBAB = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


def test_error_codes_are_unique_and_kebab_case():
    codes = declared_codes()
    assert len(codes) >= 20
    twice = {code: owners for code, owners in codes.items() if len(owners) > 1}
    assert not twice, f"codes declared by more than one class: {twice}"
    assert [c for c in codes if not KEBAB.match(c)] == []
    # every class says its own code: an inherited one would name the wrong error
    inherited = [c.__qualname__ for c in gateway_error_classes() if "code" not in c.__dict__]
    assert inherited == []


def test_diagnostic_codes_are_unique_and_distinct_from_error_codes():
    values = [member.value for member in Diag.__members__.values()]
    assert len(values) == len(set(values)), "a Diag value is declared twice (an alias)"
    assert [v for v in values if not KEBAB.match(v)] == []
    assert set(values).isdisjoint(declared_codes())


def documented_codes() -> set[str]:
    return set(re.findall(r"`([a-z][a-z0-9-]*)`", ERRORS_DOC.read_text(encoding="utf-8")))


def test_every_error_code_is_documented():
    missing = sorted(set(declared_codes()) - documented_codes())
    assert not missing, f"codes missing from docs/errors.md (as `code`): {missing}"


def test_every_diagnostic_code_is_documented():
    missing = sorted({m.value for m in Diag} - documented_codes())
    assert not missing, f"diagnostics missing from docs/errors.md (as `code`): {missing}"


def code_declarations(path: Path) -> Iterator[tuple[int, str]]:
    """``code = "..."`` in a class body, ``code=`` passed to a call, ``{"code": "..."}``."""
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:
                targets: list[ast.expr] = []
                value = None
                if isinstance(stmt, ast.Assign):
                    targets, value = stmt.targets, stmt.value
                elif isinstance(stmt, ast.AnnAssign):
                    targets, value = [stmt.target], stmt.value
                if any(isinstance(t, ast.Name) and t.id == "code" for t in targets) and (
                    isinstance(value, ast.Constant) and isinstance(value.value, str)
                ):
                    yield stmt.lineno, f"class {node.name}: {ast.unparse(stmt)}"
        elif isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "code":
                    yield node.lineno, ast.unparse(node)
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values, strict=True):
                if (
                    isinstance(key, ast.Constant)
                    and key.value == "code"
                    and isinstance(value, ast.Constant)
                    and isinstance(value.value, str)
                ):
                    yield node.lineno, ast.unparse(node)


def test_no_error_code_is_declared_outside_gateway_errors():
    found = [
        f"{rel(path)}:{number}: {text}"
        for path in sources()
        if path != ERRORS_MODULE
        for number, text in code_declarations(path)
    ]
    assert not found, "error codes belong in gateway/errors.py:\n" + "\n".join(found)


def test_the_code_scan_finds_declarations():
    # the scan must see what it looks for, or it proves nothing
    assert len(list(code_declarations(ERRORS_MODULE))) == len(declared_codes())
