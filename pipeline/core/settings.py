"""Typed settings: defaults in settings.yaml (beside this module; config/settings.yaml links to
it), overridden by environment variables.

Loaded once at start by `load_settings()` and passed down; nothing reads the environment later.
Environment names are a contract users rely on (ENV_NAMES: `KAFKA_BOOTSTRAP_SERVERS`, `DATABASE_URL`, ...);
every other setting can be overridden as `SECTION__KEY` (e.g. `KAFKA__LINGER_MS=5`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from pipeline.core.errors import ConfigError
from pipeline.core.trade_checks import DEFAULT_MAX_CLOCK_SKEW_MS, normalize_symbol

# The source checkout, for development tools and tests; the product itself never needs it.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The shipped defaults, inside the package so that an installed wheel has them too (the
# checkout's config/settings.yaml is a link to this file).
DEFAULT_SETTINGS_FILE = Path(__file__).resolve().with_name("settings.yaml")

ALL_SYMBOLS = "ALL"

Role = Literal["producer", "consumer"]
ApiPriority = Literal["normal", "realtime"]
WorkerPriority = Literal["idle", "low", "normal"]

# The environment variables users and scripts rely on, and where each lands in the tree.
ENV_NAMES: dict[str, tuple[str, ...]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("kafka", "bootstrap_servers"),
    "KAFKA_TOPIC": ("kafka", "topic"),
    "DATABASE_URL": ("database", "url"),
    "SYMBOLS": ("symbols",),
    "BINANCE_WS_URL": ("binance", "ws_url"),
    "BINANCE_REST_URL": ("binance", "rest_url"),
    "PIPELINE_ROLES": ("roles",),
    "PIPELINE_ISOLATION": ("isolation",),
    "PIPELINE_PRODUCER_PRIORITY": ("producer_priority",),
    "PIPELINE_CONSUMER_PRIORITY": ("consumer_priority",),
    "PIPELINE_WORKER_PRIORITY": ("worker_priority",),
    "PIPELINE_API_PRIORITY": ("api_priority",),
    "API_KEY": ("api", "api_key"),
    "STREAM_REQUIRES_KEY": ("stream", "requires_key"),
    "HOST": ("api", "host"),
    "PORT": ("api", "port"),
    "LOG_LEVEL": ("log_level",),
    "LOG_FORMAT": ("log_format",),
}
NESTED_DELIMITER = "__"


_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,200}")
_PASSWORD_PARAMETER = re.compile(r"(password=)[^&]*", re.IGNORECASE)


def mask_url(url: str) -> str:
    """`url` fit for a message or a log line: its password replaced by `***`.

    `scheme://user:password@host/...` becomes `scheme://user:***@host/...`, and a `password=`
    query parameter is masked too. The last `@` ends the credentials, so a password holding an
    unescaped `@` or `/` is masked whole; masking more than needed is the safe side.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    credentials, at, location = rest.rpartition("@")
    if at:
        user, colon, _ = credentials.partition(":")
        rest = f"{user}:***@{location}" if colon else f"{credentials}@{location}"
    return _PASSWORD_PARAMETER.sub(r"\1***", f"{scheme}{sep}{rest}")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class KafkaSettings(_Section):
    bootstrap_servers: str = "127.0.0.1:19092"
    topic: str = Field("crypto_prices", pattern=f"^{_TOPIC_NAME.pattern}$")
    dlq_topic: str = Field("", pattern=r"^[A-Za-z0-9._-]{0,249}$")
    partitions: PositiveInt = 3
    replication_factor: PositiveInt = 1
    group_id: str = Field("crypto-prices-sink", min_length=1)
    client_id: str = Field("crypto-streaming-pipeline", min_length=1)
    linger_ms: NonNegativeInt = 5
    max_batch_size: PositiveInt = 512 * 1024
    # zstd: aiokafka compresses lz4 at level 9, many times slower per record than zstd at its
    # default level, whose batches are also several times smaller (docs/perf.md).
    compression: Literal["lz4", "zstd", "gzip", "none"] = "zstd"
    # Events waiting for the producer; when full the source waits (backpressure, bounded memory).
    queue_size: PositiveInt = 20_000
    # How long a send may stay unacknowledged before the producer reports Kafka as down.
    request_timeout_ms: PositiveInt = 30_000
    consumer_max_records: PositiveInt = 5_000
    consumer_poll_timeout_ms: PositiveInt = 200

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_port_list(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @model_validator(mode="before")
    @classmethod
    def _default_dlq_topic(cls, data: Any) -> Any:
        # Before validation, since the model is frozen after it: the topic's name + ".dlq".
        if isinstance(data, dict) and not data.get("dlq_topic"):
            topic = data.get("topic", cls.model_fields["topic"].default)
            # A topic that is not valid is reported as such, not once more in its DLQ's name.
            if isinstance(topic, str) and _TOPIC_NAME.fullmatch(topic):
                return {**data, "dlq_topic": f"{topic}.dlq"}
        return data


class DatabaseSettings(_Section):
    # Not in the repr: it may hold the password (a logged or printed settings object).
    url: str = Field("postgresql+asyncpg://postgres@127.0.0.1:5432/crypto", repr=False)
    pool_size: PositiveInt = 5

    @field_validator("url")
    @classmethod
    def _asyncpg_url(cls, value: str) -> str:
        if not value.startswith(("postgresql+asyncpg://", "postgresql://", "postgres://")):
            raise ValueError(
                f"expected postgresql+asyncpg://user:password@host:port/db, got {mask_url(value)!r}"
            )
        return value

    @property
    def sqlalchemy_url(self) -> str:
        """The URL with the asyncpg driver, whichever spelling the user gave."""
        _, _, rest = self.url.partition("://")
        return f"postgresql+asyncpg://{rest}"

    @property
    def asyncpg_dsn(self) -> str:
        """The URL as asyncpg's own connect() wants it (no SQLAlchemy driver suffix)."""
        _, _, rest = self.url.partition("://")
        return f"postgresql://{rest}"


class BinanceSettings(_Section):
    ws_url: str = "wss://stream.binance.com:9443"
    rest_url: str = "https://api.binance.com"
    # Binance's limits (spot WebSocket streams docs): 1024 streams and 5 incoming messages/s
    # per connection, 24 h per connection, 300 connection attempts per 5 minutes per IP.
    max_streams_per_connection: int = Field(1024, ge=1, le=1024)
    max_messages_per_second: float = Field(4.0, gt=0, le=5)
    connection_max_age_s: PositiveFloat = 23.5 * 3600
    silence_timeout_s: PositiveFloat = 60.0
    reconnect_min_s: PositiveFloat = 0.5
    reconnect_max_s: PositiveFloat = 60.0
    # Gap backfill on reconnect and after a restart, bounded per symbol.
    backfill_max_trades: NonNegativeInt = 50_000
    backfill_max_age_s: NonNegativeInt = 3_600
    # Exchange REST can be seconds behind its own stream: a page that ends before ids the
    # stream already passed is asked again (with backoff) until the gap is this old; only then
    # are the ids recorded as an exchange gap. 0: recorded at once.
    gap_max_age_s: NonNegativeFloat = 60.0
    rest_timeout_s: PositiveFloat = 10.0
    verify_symbols: bool = True
    # SYMBOLS=ALL: how often exchangeInfo (weight 20) is asked for the TRADING listings; new ones
    # are tracked and delisted ones released within this (plus the registry's 1 s poll).
    listings_poll_s: float = Field(30.0, ge=0.2, le=3_600)
    # REST request weight we allow ourselves per minute (Binance: 6000/IP; historicalTrades
    # costs 25), and attempts per request on 5xx/429/network errors before giving up.
    rest_weight_per_minute: PositiveInt = 3_000
    rest_max_attempts: PositiveInt = 5
    # A larger WebSocket frame closes that connection (1009) and it reconnects.
    max_frame_bytes: PositiveInt = 1024 * 1024
    # Connection attempts per window across all connections (Binance: 300 per 5 min per IP).
    max_connection_attempts: PositiveInt = 300
    connection_attempt_window_s: PositiveFloat = 300.0
    # A connection up this long counts as healthy: the next reconnect starts from the min delay.
    healthy_after_s: PositiveFloat = 30.0
    # A long backfill logs its progress every this many REST pages.
    backfill_progress_pages: PositiveInt = 10
    # How far a trade's times may be ahead of our clock (the exchange's clock and ours differ a
    # little): a later one is dead-lettered, by the source and by the consumer alike.
    max_clock_skew_s: PositiveFloat = DEFAULT_MAX_CLOCK_SKEW_MS / 1000

    @property
    def max_clock_skew_ms(self) -> int:
        return round(self.max_clock_skew_s * 1000)

    # History jobs (POST /backfills): the longest range one job may ask for, how many run at
    # once per instance, and the share of rest_weight_per_minute they may use — the rest is
    # kept for gap filling, which also goes first whenever it waits.
    history_max_days: PositiveInt = 31
    history_jobs_at_once: PositiveInt = 2
    history_weight_share: float = Field(0.9, gt=0, le=1)
    # A running job's owner renews its claim this often; a claim older than history_stale_s
    # (its instance died) is taken over by another instance.
    history_heartbeat_s: PositiveFloat = 2.0
    history_stale_s: PositiveFloat = 20.0

    @field_validator("ws_url")
    @classmethod
    def _ws_scheme(cls, value: str) -> str:
        if not value.startswith(("ws://", "wss://")):
            raise ValueError(f"expected a ws:// or wss:// URL, got {mask_url(value)!r}")
        return value.rstrip("/")

    @field_validator("rest_url")
    @classmethod
    def _http_scheme(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError(f"expected an http:// or https:// URL, got {mask_url(value)!r}")
        return value.rstrip("/")


class ApiSettings(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    max_body_bytes: PositiveInt = 16 * 1024
    # GET /prices/{symbol} reuses a symbol's latest trade for this long (0: never): at 1,000
    # req/s the database sees ~10 reads/s instead of 1,000, and the answer is at most this old.
    latest_cache_ms: NonNegativeInt = 100
    # PostgreSQL's statement_timeout for every /prices read: a read that takes longer is
    # cancelled and answered 503, so no request holds the sink's database for long.
    read_timeout_ms: PositiveInt = 5_000
    # Connections of their own for the range reads (history, candles): however many of those
    # arrive, GET /prices keeps the rest of the pool (database.pool_size).
    range_pool_size: PositiveInt = 2

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        return None if value == "" else value


class StreamSettings(_Section):
    """The push feed (GET /stream, WS /ws): limits per process and per client."""

    enabled: bool = True
    # With API_KEY set, /stream and /ws need the key too (reads stay open otherwise).
    requires_key: bool = False
    max_clients: PositiveInt = 2_000
    max_symbols: PositiveInt = 100
    # Events waiting for one client; a client that lets more pile up is dropped as too slow.
    client_buffer: PositiveInt = 1_000
    # At most one write per client this often: events arriving meanwhile go out together.
    flush_ms: NonNegativeInt = 10
    # How long a new stream may wait for the feed and for the sink to store what the feed had
    # read when it connected (the seam of an exact resume) before it is closed with the reason.
    resume_timeout_s: PositiveFloat = 30.0
    # Trades one connection sends from the table before it closes with `resume_limit` (the
    # client reconnects from where it got to); keeps one far-behind client from hogging reads.
    max_resume_trades: PositiveInt = 100_000
    heartbeat_s: PositiveFloat = 15.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="forbid", frozen=True)

    symbols: tuple[str, ...] | Literal["ALL"] = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    roles: frozenset[Role] = frozenset({"producer", "consumer"})
    # process: each role in its own worker process (both cores; the API stays responsive under
    # full ingest); task: every role as a task on the API's event loop (one process).
    isolation: Literal["process", "task"] = "process"
    # CPU priority per worker process (pipeline/runtime/priority.py): the source first (the
    # exchange drops a reader that falls behind), the API second, the sink last (Kafka holds
    # what is not stored yet). idle: SCHED_IDLE; low: nice 10; normal: as the API. Lowering
    # one's own priority needs no privilege.
    producer_priority: WorkerPriority = "normal"
    consumer_priority: WorkerPriority = "low"
    # The older name of consumer_priority (PIPELINE_WORKER_PRIORITY), from when one setting
    # applied to both workers; when set, it is the consumer's and wins over consumer_priority.
    worker_priority: WorkerPriority | None = None
    # CPU priority of the API process's event loop. realtime (opt-in; SCHED_RR 1, needs root,
    # CAP_SYS_NICE or `ulimit -r` >= 1, else a warning and normal): its requests preempt
    # everything else on the machine, the source and the broker included.
    api_priority: ApiPriority = "normal"
    kafka: KafkaSettings = KafkaSettings()
    database: DatabaseSettings = DatabaseSettings()
    binance: BinanceSettings = BinanceSettings()
    api: ApiSettings = ApiSettings()
    stream: StreamSettings = StreamSettings()
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["console", "json"] = "console"
    shutdown_timeout_s: PositiveFloat = 20.0

    def worker_priority_of(self, role: Role) -> WorkerPriority:
        """The CPU priority of `role`'s worker process."""
        if role == "producer":
            return self.producer_priority
        return self.worker_priority or self.consumer_priority

    @field_validator("symbols", mode="before")
    @classmethod
    def _parse_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            if value.strip().upper() == ALL_SYMBOLS:
                return ALL_SYMBOLS
            value = [part for part in value.split(",") if part.strip()]
        if isinstance(value, list | tuple):
            symbols = tuple(dict.fromkeys(normalize_symbol(str(v)) for v in value))
            if not symbols:
                raise ValueError("at least one symbol, or ALL")
            return symbols
        return value

    @field_validator("roles", mode="before")
    @classmethod
    def _parse_roles(cls, value: Any) -> Any:
        if isinstance(value, str):
            parts = {part.strip().lower() for part in value.split(",") if part.strip()}
            return frozenset() if parts == {"none"} else frozenset(parts)
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Only explicit values: load_settings() merges YAML and environment itself, so that
        # error messages can name the environment variable or YAML key that was wrong.
        return (init_settings,)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"SETTINGS_FILE: {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).replace("\n", " ")
        raise ConfigError(f"SETTINGS_FILE: cannot read {path}: {reason}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"SETTINGS_FILE: {path} must hold a mapping of settings")
    return data


def _set_path(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for key in path[:-1]:
        child = node.get(key)
        if not isinstance(child, dict):
            child = {}
            node[key] = child
        node = child
    node[path[-1]] = value


def _env_overrides(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[tuple[str, ...], str]]:
    """Overrides from the environment, and for each settings path the variable that set it."""
    overrides: dict[str, Any] = {}
    origin: dict[tuple[str, ...], str] = {}
    sections = {name for name, field in Settings.model_fields.items() if _is_section(field)}
    for name, value in environ.items():
        upper = name.upper()
        if upper in ENV_NAMES:
            path = ENV_NAMES[upper]
        elif NESTED_DELIMITER in upper:
            path = tuple(part.lower() for part in upper.split(NESTED_DELIMITER))
            if path[0] not in sections:
                continue
        else:
            continue
        _set_path(overrides, path, value)
        origin[path] = name
    return overrides, origin


def _is_section(field: Any) -> bool:
    annotation = field.annotation
    return isinstance(annotation, type) and issubclass(annotation, _Section)


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _describe(error: Mapping[str, Any], origin: Mapping[tuple[str, ...], str], source: Path) -> str:
    loc = tuple(str(part) for part in error["loc"] if not str(part).startswith("function-"))
    dotted = ".".join(loc) or "settings"
    # Name the environment variable when it supplied the value, otherwise the YAML key.
    where = next((origin[loc[:n]] for n in range(len(loc), 0, -1) if loc[:n] in origin), None)
    key = f"{where} ({dotted})" if where else f"{dotted} in {source}"
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown setting"
    return f"invalid setting {key}: {message}"


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read the YAML named by SETTINGS_FILE, apply the environment, validate; fail with one line."""
    env = os.environ if environ is None else environ
    path = Path(env.get("SETTINGS_FILE") or DEFAULT_SETTINGS_FILE)
    overrides, origin = _env_overrides(env)
    values = _merge(_read_yaml(path), overrides)
    try:
        return Settings(**values)
    except ValidationError as exc:
        raise ConfigError(_describe(exc.errors()[0], origin, path)) from None
