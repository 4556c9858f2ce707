"""``gateway.yaml``: listeners, routes, policies, store, indexes and auth.

Validated by pydantic with ``extra="forbid"``; errors point into the file as
``file:line:col``. Secrets never live in the file: upstream keys, admin
tokens and the store URL can all come from environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from gateway.errors import ConfigError, YamlSyntaxError
from gateway.severity import Sev
from gateway.strict import Strict
from gateway.yaml_source import load_source, sorted_by_position, validation_messages

Protocol = Literal["auto", "openai", "anthropic", "rag-json"]
# "feedback" stands apart from the ladder: a client key that may post outcomes only
Role = Literal["reviewer", "lead", "admin", "feedback"]


class Listener(Strict):
    host: str = "127.0.0.1"
    port: int = Field(ge=0, le=65535)


class AdminListener(Listener):
    # a TLS-terminating proxy stands in front of this listener: a host other than
    # loopback is then deliberate, and the start does not warn about it
    tls_in_front: bool = False


class Listeners(Strict):
    proxy: Listener = Listener(port=8080)
    admin: AdminListener = AdminListener(port=8081)
    # processes serving both listeners; None: one per CPU core this process may use
    workers: int | None = Field(default=None, ge=1)


class Timeouts(Strict):
    """Seconds. Every wait on the upstream has one."""

    connect: float = Field(default=5.0, gt=0)
    # until the upstream's response headers arrive
    first_byte: float = Field(default=60.0, gt=0)
    # between two reads of the body (a stalled stream)
    idle: float = Field(default=60.0, gt=0)
    # the whole exchange, streams included
    total: float = Field(default=600.0, gt=0)


class ApiKey(Strict):
    """How the upstream credential is set: the client's own, or one from the environment."""

    mode: Literal["passthrough", "inject"] = "passthrough"
    env: str | None = None
    # header to set when injecting; ``auto`` picks by protocol
    header: Literal["auto", "authorization", "x-api-key"] = "auto"

    @model_validator(mode="after")
    def _env_for_inject(self) -> ApiKey:
        if self.mode == "inject" and not self.env:
            raise ValueError("api_key.mode inject needs api_key.env, the variable holding the key")
        return self


class RagJson(Strict):
    text_path: str = "answer"
    sources_path: str = "sources"
    query_path: str = "query"
    stream_text_path: str = "delta"
    # request field that asks the upstream for a stream
    stream_field: str = "stream"


class Containment(Strict):
    """Automatic containment of a route when an incident on it opens (see docs/incidents.md)."""

    # switch to the route's ``fallback`` when an incident of this severity or worse opens
    fallback_on: Sev | None = None
    # hold every response for human review
    review_all_on: Sev | None = None
    # kill switch: answer every request with ``block_message``, never calling the upstream
    block_on: Sev | None = None
    block_message: str = "This service is paused while an incident is handled."
    # undo an automatic switch once its incident resolves; off by default, so a
    # person decides when a contained route serves its primary again
    auto_revert: bool = False


class RouteReview(Strict):
    """Review-queue options of one route (see docs/review.md)."""

    # notified with a signed POST when an item of this route is decided
    callback_url: str | None = None
    # variable holding the callback's HMAC secret
    callback_secret_env: str | None = None
    # hash-and-evidence: keep no request or response text for this route
    privacy: Literal["full", "hash-and-evidence"] = "full"
    # decided items are deleted this many days after they were held
    retention_days: float = Field(default=30.0, gt=0)

    @model_validator(mode="after")
    def _callback(self) -> RouteReview:
        if self.callback_url is not None:
            if urlsplit(self.callback_url).scheme not in ("http", "https"):
                raise ValueError(f"review.callback_url must be http(s), got {self.callback_url!r}")
            if not self.callback_secret_env:
                raise ValueError("review.callback_url needs review.callback_secret_env")
        return self


class KeyLimits(Strict):
    """What one client may use: its API key, else its tenant header (see docs/limits.md).

    None is unlimited. More gets 429 with ``Retry-After`` in the client's protocol.
    """

    # a token bucket holding this many requests, refilled at this many a minute
    requests_per_minute: int | None = Field(default=None, ge=1)
    # streamed answers of the client in flight at once
    concurrent_streams: int | None = Field(default=None, ge=1)

    @property
    def active(self) -> bool:
        return self.requests_per_minute is not None or self.concurrent_streams is not None


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"upstream must be an http(s) URL, got {value!r}")
    return value.rstrip("/")


class Variant(Strict):
    """One upstream of a route that splits its traffic (a canary, an A/B test)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    # the upstream's URL, or ``model``: a model registry alias that names it
    upstream: str | None = None
    # ``<registered model>@<alias>`` in ``model_registry``; the version the alias
    # points at names its serving URL in a tag (docs/canary.md)
    model: str | None = Field(default=None, pattern=r"^[^@\s]+@[^@\s]+$")
    # a share of the route's traffic, relative to the other variants' weights
    weight: float = Field(ge=0)
    # the variant's own upstream key; unset: the route's ``api_key``
    api_key: ApiKey | None = None

    @field_validator("upstream")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        return _http_url(value) if value is not None else None

    @model_validator(mode="after")
    def _one_upstream(self) -> Variant:
        if (self.upstream is None) == (self.model is None):
            raise ValueError(f"variant {self.name}: give either upstream (a URL) or model")
        return self


class Sticky(Strict):
    """What keeps one client on one variant: its API key, a header's value, or nothing."""

    by: Literal["api_key", "header", "none"] = "api_key"
    header: str | None = None

    @model_validator(mode="after")
    def _header_named(self) -> Sticky:
        if self.by == "header" and not self.header:
            raise ValueError("sticky.by: header needs sticky.header, the header's name")
        return self


class RollbackLimit(Strict):
    # the candidate's figure over the baseline's beyond which it is rolled back
    max_ratio: float = Field(default=2.0, gt=1)
    # answers each variant needs inside the window before the ratio means anything
    min_samples: int = Field(default=200, ge=1)


class Rollback(Strict):
    """When a candidate variant is rolled back: its figures against the baseline's."""

    # the variant the others are compared with; unset: the one with the highest weight
    baseline: str | None = None
    # seconds of answers compared, and seconds between comparisons
    window: float = Field(default=600.0, gt=0)
    check_interval: float = Field(default=10.0, gt=0, le=300)
    breach_rate: RollbackLimit | None = None
    error_rate: RollbackLimit | None = None
    # the mean time to a whole answer, the upstream's included
    latency: RollbackLimit | None = None
    # the rollback incident's severity, as a policy's (high: SEV2)
    severity: Literal["low", "medium", "high", "critical"] = "high"

    @model_validator(mode="after")
    def _some_limit(self) -> Rollback:
        if self.breach_rate is None and self.error_rate is None and self.latency is None:
            raise ValueError("rollback_on needs breach_rate, error_rate or latency")
        return self


class Route(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    path_prefix: str = "/"
    # model names (shell globs) this route serves; empty means any
    models: list[str] = Field(default_factory=list)
    # required unless ``variants`` name the upstreams (it is then the baseline's URL,
    # or empty when a registry alias names the baseline: each request's variant decides)
    upstream: str = ""
    protocol: Protocol = "auto"
    timeouts: Timeouts = Timeouts()
    fallback: str | None = None
    api_key: ApiKey = ApiKey()
    rag: RagJson = RagJson()
    # dropped from the request path before it is appended to ``upstream``
    strip_prefix: str = ""
    containment: Containment = Containment()
    review: RouteReview = RouteReview()
    # per-key limits of this route, counted apart from other routes; None: ``limits.per_key``
    per_key: KeyLimits | None = None
    # traffic split between upstreams by weight (docs/canary.md); ``upstream`` then
    # defaults to the baseline variant's
    variants: list[Variant] = Field(default_factory=list)
    sticky: Sticky = Sticky()
    rollback_on: Rollback | None = None

    @model_validator(mode="before")
    @classmethod
    def _upstream_from_variants(cls, data: object) -> object:
        if isinstance(data, dict) and "upstream" not in data and data.get("variants"):
            baseline = _baseline_of(data)
            if baseline is not None and isinstance(baseline.get("upstream"), str):
                data = {**data, "upstream": baseline["upstream"]}
        return data

    @field_validator("upstream")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value) if value else value

    @model_validator(mode="after")
    def _variants_consistent(self) -> Route:
        if not self.upstream and not self.variants:
            raise ValueError("a route needs an upstream (an http(s) URL), or variants")
        names = [v.name for v in self.variants]
        if self.variants and len(self.variants) < 2:
            raise ValueError("variants: a split needs at least two variants")
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"variant names must be unique: {', '.join(dupes)}")
        if self.variants and not any(v.weight > 0 for v in self.variants):
            raise ValueError("variants: at least one variant needs a weight above 0")
        if self.rollback_on is not None:
            if not self.variants:
                raise ValueError("rollback_on needs variants to compare")
            if self.rollback_on.baseline is not None and self.rollback_on.baseline not in names:
                raise ValueError(
                    f"rollback_on.baseline {self.rollback_on.baseline!r} is no variant "
                    f"(variants: {', '.join(names)})"
                )
        return self

    def baseline_variant(self) -> Variant | None:
        """The variant the others are compared with: named, else the highest weight."""
        if not self.variants:
            return None
        named = self.rollback_on.baseline if self.rollback_on is not None else None
        if named is not None:
            return next(v for v in self.variants if v.name == named)
        return max(self.variants, key=lambda v: v.weight)

    @field_validator("path_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("path_prefix must start with '/'")
        return value


def _baseline_of(data: dict) -> dict | None:
    variants = [v for v in data.get("variants") or [] if isinstance(v, dict)]
    rollback = data.get("rollback_on")
    named = rollback.get("baseline") if isinstance(rollback, dict) else None
    found = next((v for v in variants if named is not None and v.get("name") == named), None)
    if found is not None:
        return found
    # a baseline that names no variant is reported by the validators; meanwhile the
    # upstream is one of the variants', so no "missing upstream" hides the real error
    weighted = [v for v in variants if isinstance(v.get("weight"), int | float)]
    if weighted:
        return max(weighted, key=lambda v: v["weight"])
    return variants[0] if variants else None


class MlflowRegistry(Strict):
    """An MLflow model registry whose aliases name route variants' upstreams."""

    url: str
    # a bearer token for the registry (Databricks, a hosted MLflow); unset: none
    token_env: str | None = None
    # the model version tag that holds the version's serving URL
    upstream_tag: str = "gateway.upstream"
    # URL prefixes a tag may name ("https://models.internal/"): whoever can tag a
    # version must not be able to send traffic, and the route's key, anywhere else
    allowed_upstreams: list[str] = Field(min_length=1)
    # seconds between re-reads of every alias, so a move made elsewhere is followed
    refresh_interval: float = Field(default=30.0, gt=0, le=3600)
    timeout: float = Field(default=10.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _http_url(value)

    @field_validator("allowed_upstreams")
    @classmethod
    def _prefixes(cls, value: list[str]) -> list[str]:
        for prefix in value:
            parts = urlsplit(prefix)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"allowed_upstreams: {prefix!r} is not an http(s) URL prefix")
        return value


class ModelRegistry(Strict):
    mlflow: MlflowRegistry


class Store(Strict):
    # sqlite:///relative/path.db, sqlite:////abs/path.db or postgresql://…
    url: str = "sqlite:///.gateway/gateway.db"

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str) -> str:
        if not value.startswith(("sqlite://", "postgresql://", "postgres://")):
            raise ValueError("store.url must start with sqlite:// or postgresql://")
        return value


class Token(Strict):
    name: str
    token: str | None = None
    token_env: str | None = None
    roles: list[Role] = Field(default=["reviewer"])

    @model_validator(mode="after")
    def _one_source(self) -> Token:
        if bool(self.token) == bool(self.token_env):
            raise ValueError("give exactly one of token or token_env")
        return self

    def secret(self) -> str | None:
        return self.token or os.environ.get(self.token_env or "")


class Auth(Strict):
    tokens: list[Token] = Field(default_factory=list)


class Sink(Strict):
    """Where incident events go. Credentials are named by environment variable only."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    type: Literal["pagerduty", "opsgenie", "slack", "webhook"]
    # endpoint; PagerDuty and Opsgenie default to their public APIs
    url: str | None = None
    # endpoint read from the environment (a Slack webhook URL is itself a secret)
    url_env: str | None = None
    # PagerDuty routing key, Opsgenie API key or the webhook's HMAC secret
    secret_env: str | None = None
    # events of incidents less severe than this are not sent here
    min_severity: Sev = "SEV4"
    timeout: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _needs(self) -> Sink:
        if self.type in ("pagerduty", "opsgenie", "webhook") and not self.secret_env:
            what = {
                "pagerduty": "the routing key",
                "opsgenie": "the API key",
                "webhook": "the HMAC secret",
            }[self.type]
            raise ValueError(f"sink {self.name}: secret_env must name the variable holding {what}")
        if self.type in ("slack", "webhook") and not (self.url or self.url_env):
            raise ValueError(f"sink {self.name}: give url or url_env")
        for url in (self.url,):
            if url is not None and urlsplit(url).scheme not in ("http", "https"):
                raise ValueError(f"sink {self.name}: url must be http(s), got {url!r}")
        return self


class Outbox(Strict):
    """Delivery of incident events: retries with exponential backoff and jitter."""

    base_delay: float = Field(default=1.0, gt=0)
    max_delay: float = Field(default=300.0, gt=0)
    # seconds between looks at the outbox when nothing woke the sender
    poll_interval: float = Field(default=1.0, gt=0)
    # give up on an event after this many tries; unset keeps trying forever
    max_attempts: int | None = Field(default=None, ge=1)


class Incidents(Strict):
    sinks: list[Sink] = Field(default_factory=list)
    outbox: Outbox = Outbox()
    # decision ids kept per incident as evidence
    samples: int = Field(default=20, ge=1, le=1000)
    # quiet period after which an incident resolves, unless its rule says otherwise
    auto_resolve_after: float = Field(default=900.0, gt=0)
    # seconds between checks for quiet incidents and reverts
    tick: float = Field(default=1.0, gt=0)
    # base URL of the admin listener as people reach it, for links in alerts
    public_url: str | None = None


class ReviewSettings(Strict):
    """The review queue: SLAs by severity, background sweeps, reviewer sessions."""

    # seconds to a decision before an item is overdue and escalated
    sla: dict[Literal["low", "medium", "high", "critical"], float] = Field(
        default={
            "low": 86400.0,
            "medium": 14400.0,
            "high": 3600.0,
            "critical": 900.0,
        }
    )
    # seconds between sweeps for overdue, expired and out-of-retention items
    sweep_interval: float = Field(default=5.0, gt=0)
    # reviewer UI session lifetime, seconds
    session_ttl: float = Field(default=8 * 3600.0, gt=0)
    # a review action when the store cannot take the held answer (PostgreSQL down):
    # "block" answers the client review-unavailable (503) and releases nothing;
    # "allow" releases the answer unreviewed, recorded as action allow with the
    # error review-unavailable beside the policy's breach, never as a pass
    on_store_down: Literal["block", "allow"] = "block"
    # mark the session cookie Secure (needs HTTPS in front of the admin listener)
    secure_cookie: bool = False
    callback_attempts: int = Field(default=6, ge=1, le=50)
    callback_timeout: float = Field(default=10.0, gt=0)


class Limits(Strict):
    """Bounds on what clients and upstreams can make one process hold or wait for."""

    max_body_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    max_upstream_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # one SSE event from the upstream, buffered until its blank line
    max_upstream_event_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    # seconds for a client to send a request's headers, counted from the
    # connection's start or the end of its previous response (slowloris)
    header_timeout: float = Field(default=10.0, gt=0)
    # seconds for a client to send the whole request body
    body_timeout: float = Field(default=30.0, gt=0)
    # seconds a keep-alive connection may sit idle between requests
    keepalive_timeout: float = Field(default=15.0, gt=0)
    # open client connections per listener; more are answered 503 and closed
    max_connections: int = Field(default=1024, ge=1)
    # streamed answers in flight; more are answered 503 with Retry-After
    max_streams: int = Field(default=256, ge=1)
    # what a shed client is told to wait before trying again, in seconds
    retry_after: int = Field(default=1, ge=1)
    # limits per client, shared by the processes through ``state.redis``
    per_key: KeyLimits = KeyLimits()
    # variable holding the secret that API keys are hashed with (HMAC-SHA256) before
    # they name a counter; every process of a deployment needs the same one
    per_key_secret_env: str | None = None


class Tracing(Strict):
    """OpenTelemetry tracing: off by default, and nothing of it is imported while off."""

    enabled: bool = False
    service_name: str = "governance-gateway"
    # "otlp" sends OTLP/HTTP to ``endpoint``; "console" prints spans (for trying it out)
    exporter: Literal["otlp", "console"] = "otlp"
    # the collector's traces URL; None: the exporter's own default and OTEL_* variables
    endpoint: str | None = None
    # share of new traces kept; a trace started upstream of the gateway keeps its own choice
    sample_ratio: float = Field(default=1.0, ge=0, le=1)


class State(Strict):
    """State shared by several gateway processes (replicas, workers) through one store."""

    # seconds between reconciliations: each process re-reads shared state from the
    # store this often, and once after its change-notice connection comes back, so a
    # notice it missed (a restart, a PostgreSQL outage) delays a change by at most this
    reconcile_interval: float = Field(default=5.0, gt=0, le=300)
    # redis://[user:password@]host:port/db (or rediss://, unix://): the counters of
    # per-key limits, shared by the processes; None: each process counts alone.
    # GATEWAY_REDIS_URL, when set, wins (the URL may carry a password)
    redis: str | None = None
    # while Redis cannot be reached: ``open`` limits each process on its own,
    # ``closed`` answers 503 limits-unavailable
    redis_down: Literal["open", "closed"] = "open"
    # prefix of every Redis key the gateway writes, so deployments can share a server
    redis_prefix: str = Field(default="gateway", pattern=r"^[A-Za-z0-9_.:-]+$")

    @field_validator("redis")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            # the value itself is not repeated: it may carry a password
            raise ValueError("state.redis must be a redis://, rediss:// or unix:// URL")
        return value

    def redis_url(self) -> str | None:
        return os.environ.get("GATEWAY_REDIS_URL") or self.redis


class Settings(Strict):
    listeners: Listeners = Listeners()
    routes: list[Route] = Field(min_length=1)
    policies: list[str] = Field(default_factory=lambda: ["policies"])
    store: Store = Store()
    # index name -> directory of a built index
    indexes: dict[str, str] = Field(default_factory=dict)
    auth: Auth = Auth()
    limits: Limits = Limits()
    incidents: Incidents = Incidents()
    review: ReviewSettings = ReviewSettings()
    # seconds between checks of policy files for changes
    reload_interval: float = Field(default=0.5, gt=0, le=60)
    data_dir: str = ".gateway"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    tracing: Tracing = Tracing()
    state: State = State()
    # where route variants named by ``model`` are resolved (docs/canary.md)
    model_registry: ModelRegistry | None = None

    @model_validator(mode="after")
    def _routes_consistent(self) -> Settings:
        names = [r.name for r in self.routes]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"route names must be unique: {', '.join(dupes)}")
        problems: list[InitErrorDetails] = []

        def problem(loc: tuple[str | int, ...], value: object, message: str) -> None:
            # located at the offending key, so a file's error names the line to edit
            # (a plain ValueError here would point at the document's first key)
            problems.append(
                InitErrorDetails(
                    type=PydanticCustomError("value_error", "{message}", {"message": message}),
                    loc=loc,
                    input=value,
                )
            )

        for i, route in enumerate(self.routes):
            if route.fallback is not None:
                at = ("routes", i, "fallback")
                if route.fallback == route.name:
                    problem(
                        at,
                        route.fallback,
                        f"route {route.name}: fallback cannot be the route itself",
                    )
                elif route.fallback not in names:
                    problem(
                        at,
                        route.fallback,
                        f"route {route.name}: fallback {route.fallback!r} is no route",
                    )
                elif route.upstream and self.route(route.fallback).upstream == route.upstream:
                    problem(
                        at,
                        route.fallback,
                        f"route {route.name}: fallback {route.fallback!r} has the same upstream; "
                        "a fallback must go somewhere else",
                    )
            named = [v for v in route.variants if v.model is not None]
            if named and self.model_registry is None:
                problem(
                    ("routes", i, "variants"),
                    named[0].model,
                    f"route {route.name}: variant {named[0].name} names a model alias; "
                    "configure model_registry to resolve it",
                )
            if route.containment.fallback_on is not None and route.fallback is None:
                problem(
                    ("routes", i, "containment", "fallback_on"),
                    route.containment.fallback_on,
                    f"route {route.name}: containment.fallback_on needs a fallback route",
                )
        if problems:
            raise ValidationError.from_exception_data(type(self).__name__, problems)
        sinks = [s.name for s in self.incidents.sinks]
        dupes = sorted({n for n in sinks if sinks.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique: {', '.join(dupes)}")
        return self

    def route(self, name: str) -> Route:
        return next(r for r in self.routes if r.name == name)

    def find_route(self, name: str) -> Route | None:
        """The route named ``name``, or None (a stored item may outlive its route)."""
        return next((r for r in self.routes if r.name == name), None)

    def store_url(self) -> str:
        return os.environ.get("GATEWAY_STORE_URL") or self.store.url


def load_settings(path: str | Path) -> Settings:
    """Read ``gateway.yaml``; relative paths in it resolve against its directory."""
    try:
        # a key written twice is reported with every other error, not alone
        source = load_source(path, keep_duplicates=True)
    except YamlSyntaxError as exc:
        raise ConfigError(f"invalid config {path}", exc.errors) from None
    errors = [line for _, line in source.duplicates]
    try:
        settings = Settings.model_validate(source.data or {})
    except ValidationError as exc:
        errors += validation_messages(source, exc, model=Settings, data=source.data)
    if errors:
        raise ConfigError(f"invalid config {path}", sorted_by_position(errors))
    base = Path(path).resolve().parent
    return _resolve_paths(settings, base)


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    def absolute(p: str) -> str:
        return p if Path(p).is_absolute() else str(base / p)

    store = settings.store
    # an in-memory database (``sqlite:///:memory:``) names no file to resolve
    if (
        store.url.startswith("sqlite:///")
        and not store.url.startswith("sqlite:////")
        and store.url != "sqlite:///:memory:"
    ):
        store = Store(url="sqlite:///" + absolute(store.url[len("sqlite:///") :]))
    return settings.model_copy(
        update={
            "policies": [absolute(p) for p in settings.policies],
            "indexes": {k: absolute(v) for k, v in settings.indexes.items()},
            "data_dir": absolute(settings.data_dir),
            "store": store,
        }
    )


def quickstart(
    upstream: str,
    policies: list[str] | None = None,
    port: int = 8080,
    admin_port: int = 8081,
    host: str = "127.0.0.1",
    admin_host: str = "127.0.0.1",
) -> Settings:
    """Settings for ``gateway serve --upstream URL``: one route for OpenAI and Anthropic paths.

    ``host`` binds the proxy only: the admin listener has its own ``admin_host``.
    """
    base = upstream.rstrip("/")
    # clients already send /v1/...; an upstream given as https://host/v1 would double it
    if base.endswith("/v1"):
        base = base[: -len("/v1")]
    return Settings(
        listeners=Listeners(
            proxy=Listener(host=host, port=port),
            admin=AdminListener(host=admin_host, port=admin_port),
        ),
        routes=[Route(name="default", upstream=base, protocol="auto")],
        policies=policies or ["policies"],
    )
