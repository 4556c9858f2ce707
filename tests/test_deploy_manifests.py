"""The deployment shapes (docker-compose.yml, deploy/) hold together.

Every file parses; every name one file gives another (services, volumes,
ConfigMaps, Secrets, ports, labels) exists there; the gateway configs pass
the gateway's own validation; and nginx, promtool and kubernetes-validate
check the files too (scripts/test.sh unpacks nginx and promtool from their
Debian packages; kubernetes-validate is a dev dependency).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from gateway.admin import routes as admin_routes
from gateway.config import Settings, load_settings
from gateway.policy.loader import load_policies

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_GATEWAY = COMPOSE_DIR / "gateway.yaml"
START_SCRIPT = COMPOSE_DIR / "start-gateway.sh"
COMPOSE_PROMETHEUS = COMPOSE_DIR / "prometheus.yml"
NGINX_CONF = ROOT / "deploy" / "nginx" / "gateway.conf"
K8S = ROOT / "deploy" / "k8s"
DOCKERFILE = ROOT / "Dockerfile"

# what `docker compose` would be given by the person starting the stack: the
# variables it requires (${NAME:?...}) and nothing else
COMPOSE_TEST_ENV = {"GATEWAY_ADMIN_TOKEN": "test-admin-token"}
# the ${NAME} placeholders that start-gateway.sh fills in the gateway config
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
# docker compose's interpolation: ${NAME}, ${NAME:-default}, ${NAME:?message}, $$
_COMPOSE_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


# --------------------------------------------------------------------- loading


def yaml_files() -> list[Path]:
    files = [COMPOSE, *sorted(COMPOSE_DIR.rglob("*.y*ml")), *sorted(K8S.glob("*.y*ml"))]
    return [f for f in files if f.is_file()]


def load_all(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """``value`` with compose's variables replaced as ``docker compose`` would."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2), match.group(3)
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            if not current:
                raise AssertionError(f"docker compose would stop: {name} unset ({arg})")
            return current
        return current or ""

    return _COMPOSE_VAR.sub(one, value)


def compose() -> dict[str, Any]:
    (doc,) = load_all(COMPOSE)
    return {k: interpolate(v, COMPOSE_TEST_ENV) for k, v in doc.items() if not k.startswith("x-")}


def gateway_services(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The compose services built from this repository: the gateway replicas."""
    found = {name: svc for name, svc in spec["services"].items() if "build" in svc}
    assert len(found) >= 2, "docker-compose.yml should run at least two gateway replicas"
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


@dataclass
class Mount:
    source: str
    target: str
    read_only: bool


def mounts(service: dict[str, Any]) -> list[Mount]:
    out = []
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out.append(Mount(entry["source"], entry["target"], bool(entry.get("read_only"))))
            continue
        parts = entry.split(":")
        out.append(Mount(parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
    return out


def mount_at(service: dict[str, Any], target: str) -> Mount:
    """The mount whose target holds the container path ``target``."""
    best = None
    for mount in mounts(service):
        if PurePosixPath(target).is_relative_to(mount.target):
            if best is None or len(mount.target) > len(best.target):
                best = mount
    assert best is not None, f"nothing is mounted at {target}"
    return best


def is_bind(mount: Mount) -> bool:
    return mount.source.startswith((".", "/"))


def render_compose_gateway(env: dict[str, str], tmp_path: Path) -> Settings:
    """deploy/compose/gateway.yaml filled as start-gateway.sh fills it, then loaded."""
    text = COMPOSE_GATEWAY.read_text()
    missing = sorted({n for n in _PLACEHOLDER.findall(text) if n not in env})
    assert not missing, f"gateway.yaml uses {missing}, which the replicas' environment lacks"
    rendered = tmp_path / "gateway.yaml"
    rendered.write_text(_PLACEHOLDER.sub(lambda m: env[m.group(1)], text))
    return load_settings(rendered)


def k8s_docs() -> list[dict[str, Any]]:
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    docs = []
    for name in kustomization["resources"]:
        docs.extend(load_all(K8S / name))
    return docs


def k8s_one(kind: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    found = [d for d in (docs or k8s_docs()) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def k8s_gateway_settings(tmp_path: Path) -> Settings:
    """The gateway.yaml of the k8s ConfigMap, loaded by the gateway."""
    (config,) = [d for d in k8s_docs() if d["kind"] == "ConfigMap" and "gateway.yaml" in d["data"]]
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "gateway.yaml"
    path.write_text(config["data"]["gateway.yaml"])
    return load_settings(path)


# ----------------------------------------------------------------- nginx config


@dataclass
class Directive:
    name: str
    args: list[str]
    block: list[Directive] | None = None

    def all(self, name: str) -> list[Directive]:
        return [d for d in self.block or [] if d.name == name]

    def one(self, name: str) -> Directive:
        found = self.all(name)
        assert len(found) == 1, f"{self.name} {' '.join(self.args)}: {len(found)} {name}"
        return found[0]

    def value(self, name: str) -> str:
        return " ".join(self.one(name).args)


@dataclass
class NginxConf:
    directives: list[Directive] = field(default_factory=list)

    def upstream(self, name: str) -> Directive:
        (found,) = [d for d in self.directives if d.name == "upstream" and d.args == [name]]
        return found

    def server(self, port: int) -> Directive:
        found = [
            d
            for d in self.directives
            if d.name == "server" and any(x.args[0] == str(port) for x in d.all("listen"))
        ]
        assert len(found) == 1, f"expected one server listening on {port}"
        return found[0]


def _tokens(text: str) -> Iterator[str]:
    for match in re.finditer(r'"((?:\\.|[^"\\])*)"|\'([^\']*)\'|#[^\n]*|([{};])|([^\s{};]+)', text):
        if match.group(0).startswith("#"):
            continue
        quoted = match.group(1) if match.group(1) is not None else match.group(2)
        yield quoted if quoted is not None else match.group(0)


def parse_nginx(text: str) -> NginxConf:
    stack: list[list[Directive]] = [[]]
    words: list[str] = []
    for token in _tokens(text):
        if token == ";":
            stack[-1].append(Directive(words[0], words[1:]))
            words = []
        elif token == "{":
            directive = Directive(words[0], words[1:], [])
            stack[-1].append(directive)
            stack.append(directive.block)  # type: ignore[arg-type]
            words = []
        elif token == "}":
            assert not words, f"unterminated directive {words}"
            stack.pop()
        else:
            words.append(token)
    assert len(stack) == 1 and not words, "unbalanced braces in the nginx config"
    return NginxConf(stack[0])


def nginx_conf() -> NginxConf:
    return parse_nginx(NGINX_CONF.read_text())


def nginx_size(value: str) -> int:
    units = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", value).groups()  # type: ignore[union-attr]
    return int(number) * units[unit.lower()]


def nginx_seconds(value: str) -> float:
    units = {"": 1, "ms": 0.001, "s": 1, "m": 60, "h": 3600}
    number, unit = re.fullmatch(r"(\d+)(ms|s|m|h)?", value).groups()  # type: ignore[union-attr]
    return int(number) * units[unit or ""]


# ------------------------------------------------------------- every file parses


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_yaml_file_parses(path: Path):
    docs = load_all(path)
    assert docs, f"{path} holds no document"
    if path.parent == K8S and path.name != "kustomization.yaml":
        for doc in docs:
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc


def test_the_nginx_config_parses():
    conf = nginx_conf()
    assert {d.name for d in conf.directives} == {"upstream", "server"}


# --------------------------------------------------------------------- compose


def test_compose_dependencies_are_services_with_the_checks_they_wait_for():
    services = compose()["services"]
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        if isinstance(depends, list):
            depends = {d: {"condition": "service_started"} for d in depends}
        for dependency, how in depends.items():
            assert dependency in services, f"{name} depends on {dependency}, no such service"
            if how.get("condition") == "service_healthy":
                assert "healthcheck" in services[dependency], (
                    f"{name} waits for {dependency} to be healthy, which has no healthcheck"
                )


def test_replicas_wait_for_a_healthy_postgres_checked_with_pg_isready():
    spec = compose()
    postgres = spec["services"]["postgres"]
    assert postgres["image"].startswith("postgres:")
    assert "pg_isready" in postgres["healthcheck"]["test"]
    assert spec["services"]["redis"]["image"].startswith("redis:")
    for name, svc in gateway_services(spec).items():
        assert svc["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_compose_files_and_named_volumes_exist():
    spec = compose()
    declared = set(spec.get("volumes") or {})
    for name, svc in spec["services"].items():
        if "build" in svc:
            context = ROOT / svc["build"]["context"]
            assert (context / svc["build"].get("dockerfile", "Dockerfile")).is_file(), name
        for mount in mounts(svc):
            if is_bind(mount):
                assert (ROOT / mount.source).exists(), f"{name} mounts missing {mount.source}"
            else:
                assert mount.source in declared, f"{name} uses undeclared volume {mount.source}"


def test_each_replica_keeps_its_own_data_dir_and_shares_the_rest(tmp_path: Path):
    spec = compose()
    replicas = gateway_services(spec)
    data_volumes = []
    for name, svc in replicas.items():
        settings = render_compose_gateway(environment(svc), tmp_path)
        data = mount_at(svc, settings.data_dir)
        assert not is_bind(data) and not data.read_only, f"{name}: data_dir needs a volume"
        data_volumes.append(data.source)
    assert len(set(data_volumes)) == len(replicas), "replicas must not share a data_dir volume"


def test_the_compose_gateway_config_validates_and_uses_the_shared_postgres(tmp_path: Path):
    spec = compose()
    for name, svc in gateway_services(spec).items():
        env = environment(svc)
        settings = render_compose_gateway(env, tmp_path)
        store = re.match(r"postgres(?:ql)?://[^@]*@([^:/]+):(\d+)/", settings.store.url)
        assert store, f"{name}: store.url must be the shared PostgreSQL, is {settings.store.url}"
        assert store.group(1) in spec["services"], f"{name}: store host is no compose service"
        assert store.group(2) == "5432"
        # the default upstream is a real URL without anything set by the user
        assert settings.routes[0].upstream.startswith("https://")
        # tokens from the environment, the same for every replica
        assert settings.auth.tokens and all(t.token_env in env for t in settings.auth.tokens)


def test_the_replicas_run_the_mounted_config_and_policies(tmp_path: Path):
    script = START_SCRIPT.read_text()
    template = re.search(r"^TEMPLATE=(\S+)$", script, re.M).group(1)  # type: ignore[union-attr]
    rendered = re.search(r"^RENDERED=(\S+)$", script, re.M).group(1)  # type: ignore[union-attr]
    spec = compose()
    for name, svc in gateway_services(spec).items():
        entry = svc["entrypoint"]
        script_mount = mount_at(svc, entry[-1])
        assert (ROOT / script_mount.source).resolve() == START_SCRIPT, name
        config = mount_at(svc, template)
        assert (ROOT / config.source).resolve() == COMPOSE_GATEWAY and config.read_only
        # the filled copy goes to a writable place, since the root is read-only
        if svc.get("read_only"):
            assert any(PurePosixPath(rendered).is_relative_to(t) for t in svc["tmpfs"]), name
        settings = render_compose_gateway(environment(svc), tmp_path)
        for policy_dir in settings.policies:
            policies = mount_at(svc, policy_dir)
            assert (ROOT / policies.source).resolve() == ROOT / "policies", name


def test_compose_ports_match_the_gateway_listeners(tmp_path: Path):
    spec = compose()
    conf = nginx_conf()
    replicas = gateway_services(spec)
    for name, svc in replicas.items():
        settings = render_compose_gateway(environment(svc), tmp_path)
        proxy, admin = settings.listeners.proxy, settings.listeners.admin
        # nginx and Prometheus reach the replicas over the compose network
        assert proxy.host == "0.0.0.0" and admin.host == "0.0.0.0", name
        check = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{admin.port}/readyz" in check, name
        proxied = {" ".join(s.args[:1]) for s in conf.upstream("gateway_proxy").all("server")}
        administered = {s.args[0] for s in conf.upstream("gateway_admin").all("server")}
        assert f"{name}:{proxy.port}" in proxied
        assert f"{name}:{admin.port}" in administered
    for upstream in ("gateway_proxy", "gateway_admin"):
        hosts = {s.args[0].split(":")[0] for s in conf.upstream(upstream).all("server")}
        assert hosts == set(replicas), f"{upstream} should list exactly the replicas"
    # what nginx listens on is what compose publishes
    published = {int(str(p).rsplit(":", 1)[-1]) for p in spec["services"]["nginx"]["ports"]}
    listening = {
        int(listen.args[0])
        for server in conf.directives
        if server.name == "server"
        for listen in server.all("listen")
    }
    assert published == listening
    # the nginx config is what the nginx service loads
    (config,) = [m for m in mounts(spec["services"]["nginx"]) if m.source.endswith(".conf")]
    assert (ROOT / config.source).resolve() == NGINX_CONF
    assert config.target.startswith("/etc/nginx/conf.d/")


def test_the_admin_listener_is_published_on_loopback_only():
    spec = compose()
    conf = nginx_conf()
    admin_server = [
        s
        for s in conf.directives
        if s.name == "server" and s.one("location").value("proxy_pass") == "http://gateway_admin"
    ]
    (admin_port,) = [int(x.args[0]) for x in admin_server[0].all("listen")]
    for port in spec["services"]["nginx"]["ports"]:
        if str(port).endswith(f":{admin_port}"):
            assert str(port).startswith("127.0.0.1:"), port


def test_nginx_streams_and_bounds_requests_like_the_gateway(tmp_path: Path):
    spec = compose()
    replica = next(iter(gateway_services(spec).values()))
    settings = render_compose_gateway(environment(replica), tmp_path)
    conf = nginx_conf()
    proxy_server = conf.server(settings.listeners.proxy.port)
    location = proxy_server.one("location")
    assert location.value("proxy_pass") == "http://gateway_proxy"
    # the same body limit as the gateway: nginx answers 413 where a replica would
    assert nginx_size(proxy_server.value("client_max_body_size")) == (
        settings.limits.max_body_bytes
    )
    assert nginx_seconds(proxy_server.value("client_body_timeout")) <= settings.limits.body_timeout
    # streams pass through as they are released
    assert location.value("proxy_buffering") == "off"
    longest = max(route.timeouts.total for route in settings.routes)
    assert nginx_seconds(location.value("proxy_read_timeout")) > longest
    assert nginx_seconds(location.value("proxy_send_timeout")) > longest
    # a request a replica may have started is never sent to another one
    assert "non_idempotent" not in location.value("proxy_next_upstream")
    for server in (proxy_server, conf.server(settings.listeners.admin.port)):
        loc = server.one("location")
        headers = {h.args[0].lower(): h.args[1:] for h in loc.all("proxy_set_header")}
        # a proxy_set_header here replaces the inherited ones: say Authorization
        assert headers["authorization"] == ["$http_authorization"]
        # keepalive to the upstreams needs HTTP/1.1 without "Connection: close"
        assert loc.value("proxy_http_version") == "1.1"
        assert headers["connection"] == [""]
    for name in ("gateway_proxy", "gateway_admin"):
        upstream = conf.upstream(name)
        assert int(upstream.value("keepalive")) > 0
        # nginx must let an idle connection go before the replica closes it
        idle = nginx_seconds(upstream.value("keepalive_timeout"))
        assert idle < settings.limits.keepalive_timeout
        names = [d.name for d in upstream.block or []]
        for method in ("least_conn", "ip_hash", "hash", "random"):
            if method in names:
                assert names.index(method) < names.index("keepalive"), name


def test_prometheus_scrapes_every_replica_admin_listener(tmp_path: Path):
    spec = compose()
    replicas = gateway_services(spec)
    prometheus = spec["services"]["prometheus"]
    (config,) = load_all(COMPOSE_PROMETHEUS)
    config_mount = [
        m for m in mounts(prometheus) if (ROOT / m.source).resolve() == COMPOSE_PROMETHEUS
    ]
    assert config_mount, "the prometheus service does not mount deploy/compose/prometheus.yml"
    config_path = PurePosixPath(config_mount[0].target)
    assert f"--config.file={config_path}" in prometheus["command"]
    targets = [
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    ]
    for target in targets:
        host, port = target.rsplit(":", 1)
        assert host in spec["services"], f"scrape target {target} is no compose service"
        settings = render_compose_gateway(environment(spec["services"][host]), tmp_path)
        assert int(port) == settings.listeners.admin.port, target
    assert {t.rsplit(":", 1)[0] for t in targets} == set(replicas), "scrape every replica"
    # the rule files are the repository's, mounted beside the config
    for rule_file in config.get("rule_files", []):
        mount = mount_at(prometheus, str(config_path.parent / rule_file))
        assert (ROOT / mount.source).resolve() == ROOT / "deploy/prometheus/gateway-alerts.yaml"


def test_grafana_is_provisioned_with_the_repository_dashboards():
    spec = compose()
    grafana = spec["services"]["grafana"]
    provisioned: dict[str, list[Any]] = {"datasources": [], "dashboards": []}
    for mount in mounts(grafana):
        for kind in provisioned:
            if mount.target.startswith(f"/etc/grafana/provisioning/{kind}/"):
                provisioned[kind].extend(load_all(ROOT / mount.source))
    (datasources,) = provisioned["datasources"]
    (prometheus,) = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
    host = re.match(r"http://([^:/]+):(\d+)", prometheus["url"])
    assert host and host.group(1) in spec["services"] and host.group(2) == "9090"
    assert prometheus["isDefault"], "the dashboard's data source variable starts on the default"
    (dashboards,) = provisioned["dashboards"]
    for provider in dashboards["providers"]:
        folder = mount_at(grafana, provider["options"]["path"])
        assert (ROOT / folder.source).resolve() == ROOT / "deploy" / "grafana"
        assert list((ROOT / folder.source).glob("*.json")), "no dashboard to provision"


# ------------------------------------------------------------------ kubernetes


def test_kustomization_lists_files_that_exist():
    (kustomization,) = load_all(K8S / "kustomization.yaml")
    for name in kustomization["resources"]:
        assert (K8S / name).is_file(), name
    kinds = {d["kind"] for d in k8s_docs()}
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap"} <= kinds


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def test_k8s_selectors_match_the_deployment_pods():
    docs = k8s_docs()
    deployment = k8s_one("Deployment", docs)
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"] == {
        k: pod_labels[k] for k in deployment["spec"]["selector"]["matchLabels"]
    }
    services = [d for d in docs if d["kind"] == "Service"]
    assert services
    for service in services:
        assert _matches(service["spec"]["selector"], pod_labels), service["metadata"]["name"]
    pdb = k8s_one("PodDisruptionBudget", docs)
    assert _matches(pdb["spec"]["selector"]["matchLabels"], pod_labels)
    assert pdb["spec"]["minAvailable"] == 1
    assert deployment["spec"]["replicas"] >= 2


def _container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = k8s_one("Deployment", docs)["spec"]["template"]["spec"]["containers"]
    return container


def _port(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return found


def test_k8s_volumes_name_config_maps_and_secrets_that_exist():
    docs = k8s_docs()
    pod = k8s_one("Deployment", docs)["spec"]["template"]["spec"]
    config_maps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for volume in volumes.values():
        if "configMap" in volume:
            name = volume["configMap"]["name"]
            assert name in config_maps, f"volume {volume['name']}: no ConfigMap {name}"
            for item in volume["configMap"].get("items", []):
                assert item["key"] in config_maps[name]["data"]
    for container in pod["containers"]:
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes, mount
    # the Secret is made out of band; its example says which keys it needs
    (example,) = load_all(K8S / "secret.example.yaml")
    for container in pod["containers"]:
        for env in container.get("env", []):
            ref = env.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == example["metadata"]["name"], env["name"]
                assert ref["key"] in example["stringData"], env["name"]


def test_the_k8s_gateway_config_validates_and_matches_the_pod(tmp_path: Path):
    docs = k8s_docs()
    settings = k8s_gateway_settings(tmp_path)
    container = _container(docs)
    pod = k8s_one("Deployment", docs)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts_by_path = {m["mountPath"]: m for m in container["volumeMounts"]}

    def volume_at(path: str) -> dict[str, Any]:
        holders = [p for p in mounts_by_path if PurePosixPath(path).is_relative_to(p)]
        assert holders, f"nothing is mounted at {path}"
        return volumes[mounts_by_path[max(holders, key=len)]["name"]]

    # the --config file is a key of the ConfigMap mounted there
    args = container["args"]
    config_path = PurePosixPath(args[args.index("--config") + 1])
    config_volume = volume_at(str(config_path))
    config_map = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_volume["configMap"]["name"]
    )
    assert config_path.name in config_map["data"]
    # policies come from the policies ConfigMap, and they load
    (policy_dir,) = settings.policies
    policies_volume = volume_at(policy_dir)
    assert policies_volume["configMap"]["name"] != config_volume["configMap"]["name"]
    # data_dir sits in a writable emptyDir: the root file system is read-only
    assert "emptyDir" in volume_at(settings.data_dir)
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert "emptyDir" in volume_at("/tmp/x")
    # the store is the shared PostgreSQL, its DSN from the Secret
    assert settings.store.url.startswith(("postgresql://", "postgres://"))
    env_names = {e["name"] for e in container["env"]}
    assert "GATEWAY_STORE_URL" in env_names
    assert all(t.token_env in env_names for t in settings.auth.tokens)


def test_the_k8s_policies_config_map_holds_valid_policies(tmp_path: Path):
    docs = k8s_docs()
    pod = k8s_one("Deployment", docs)["spec"]["template"]["spec"]
    settings = k8s_gateway_settings(tmp_path / "config")
    (policy_dir,) = settings.policies
    (mount,) = [m for m in _container(docs)["volumeMounts"] if m["mountPath"] == policy_dir]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    (config_map,) = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == volume["configMap"]["name"]
    ]
    folder = tmp_path / "policies"
    folder.mkdir()
    for key, text in config_map["data"].items():
        (folder / key).write_text(text)
    policies = load_policies([folder])
    assert policies.policies, "the policies ConfigMap holds no policy"


def test_k8s_probes_and_services_use_the_listeners(tmp_path: Path):
    docs = k8s_docs()
    settings = k8s_gateway_settings(tmp_path)
    container = _container(docs)
    admin, proxy = settings.listeners.admin, settings.listeners.proxy
    # probes come from the kubelet, on the pod's address
    assert admin.host == "0.0.0.0" and proxy.host == "0.0.0.0"
    served = {getattr(r, "path", None) for r in admin_routes}
    readiness = container["readinessProbe"]["httpGet"]
    assert readiness["path"] == "/readyz" and _port(container, readiness["port"]) == admin.port
    liveness = container["livenessProbe"]["httpGet"]
    assert liveness["path"] in served and liveness["path"] == "/healthz"
    assert _port(container, liveness["port"]) == admin.port
    assert {"/readyz", "/healthz"} <= served
    targets = {
        _port(container, port["targetPort"])
        for service in docs
        if service["kind"] == "Service"
        for port in service["spec"]["ports"]
    }
    assert targets == {proxy.port, admin.port}
    annotations = k8s_one("Deployment", docs)["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == admin.port


def test_the_pod_runs_as_the_image_user_and_has_time_to_drain():
    docs = k8s_docs()
    pod = k8s_one("Deployment", docs)["spec"]["template"]["spec"]
    user, group = re.search(r"^USER (\d+):(\d+)$", DOCKERFILE.read_text(), re.M).groups()  # type: ignore[union-attr]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user)
    assert pod["securityContext"]["runAsGroup"] == int(group)
    container = _container(docs)
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"requests", "limits"} <= container["resources"].keys()
    # preStop's pause, then the proxy's own drain of requests in flight, then the flush
    pause = int(container["lifecycle"]["preStop"]["exec"]["command"][-1])
    server = (ROOT / "gateway" / "server.py").read_text()
    drains = re.findall(r"shutdown_timeout=(\d+)", server)
    assert drains, "gateway/server.py no longer says how long it drains: update this test"
    assert pod["terminationGracePeriodSeconds"] > pause + max(map(int, drains)) + 10


# -------------------------------------------------------- the tools, when present


def _tool(name: str, *extra: Path) -> str | None:
    for candidate in (shutil.which(name), *map(str, extra)):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def test_nginx_accepts_the_config(tmp_path: Path):
    nginx = _tool("nginx", Path("/usr/sbin/nginx"), ROOT / ".tools/nginx/usr/sbin/nginx")
    if nginx is None:
        pytest.fail("nginx is missing: run the tests with bash scripts/test.sh")
    spec = compose()
    # compose's service names do not resolve here, and nginx resolves upstreams
    # while it checks the config
    conf = NGINX_CONF.read_text()
    for name in gateway_services(spec):
        conf = re.sub(rf"\b{re.escape(name)}:", "127.0.0.1:", conf)
    (tmp_path / "gateway.conf").write_text(conf)
    temp_paths = "\n".join(
        f"  {kind}_temp_path {tmp_path / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\n"
        f"error_log {tmp_path / 'error.log'};\n"
        "events {}\n"
        f"http {{\n  access_log off;\n{temp_paths}\n  include {tmp_path / 'gateway.conf'};\n}}\n"
    )
    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_the_k8s_manifests_match_the_kubernetes_schemas():
    import kubernetes_validate  # type: ignore[import-not-found]

    for path in [*sorted(K8S.glob("*.yaml"))]:
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            kubernetes_validate.validate(doc, "1.30.0", strict=True)


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path):
    promtool = _tool("promtool", ROOT / ".tools/prometheus/usr/bin/promtool")
    if promtool is None:
        pytest.fail("promtool is missing: run the tests with bash scripts/test.sh")
    # laid out as the prometheus service sees it: the rules beside the config
    shutil.copy(COMPOSE_PROMETHEUS, tmp_path / "prometheus.yml")
    shutil.copy(ROOT / "deploy/prometheus/gateway-alerts.yaml", tmp_path / "gateway-alerts.yaml")
    result = subprocess.run(
        [promtool, "check", "config", "--syntax-only", str(tmp_path / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
