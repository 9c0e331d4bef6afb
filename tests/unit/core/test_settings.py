"""Settings: YAML defaults, environment overrides, and one clear line for anything invalid."""

from pathlib import Path

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.settings import DatabaseSettings, load_settings, mask_url


def test_defaults_come_from_settings_yaml() -> None:
    settings = load_settings({})
    assert settings.symbols == ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    assert settings.kafka.topic == "crypto_prices"
    assert settings.kafka.dlq_topic == "crypto_prices.dlq"
    assert settings.roles == {"producer", "consumer"}


def test_contract_environment_variables_override_yaml() -> None:
    settings = load_settings(
        {
            "KAFKA_BOOTSTRAP_SERVERS": "10.0.0.1:9092,10.0.0.2:9092",
            "KAFKA_TOPIC": "trades",
            "DATABASE_URL": "postgresql+asyncpg://u:p@db:5432/x",
            "SYMBOLS": "adausdt, btcusdt,ADAUSDT",
            "BINANCE_WS_URL": "wss://data-stream.binance.vision/",
            "BINANCE_REST_URL": "https://api.binance.us",
            "PIPELINE_ROLES": "consumer",
            "API_KEY": "s3cret",
            "HOST": "0.0.0.0",
            "PORT": "9000",
        }
    )
    assert settings.kafka.bootstrap_servers == "10.0.0.1:9092,10.0.0.2:9092"
    assert settings.kafka.dlq_topic == "trades.dlq"
    assert settings.database.asyncpg_dsn == "postgresql://u:p@db:5432/x"
    assert settings.symbols == ("ADAUSDT", "BTCUSDT")
    assert settings.binance.ws_url == "wss://data-stream.binance.vision"
    assert settings.roles == {"consumer"}
    assert settings.api.api_key is not None and settings.api.api_key.get_secret_value() == "s3cret"
    assert (settings.api.host, settings.api.port) == ("0.0.0.0", 9000)


def test_any_setting_can_be_overridden_as_section_double_underscore_key() -> None:
    settings = load_settings({"KAFKA__LINGER_MS": "5", "BINANCE__BACKFILL_MAX_TRADES": "10"})
    assert settings.kafka.linger_ms == 5
    assert settings.binance.backfill_max_trades == 10


def test_the_allowed_clock_skew_is_five_minutes_unless_set() -> None:
    assert load_settings({}).binance.max_clock_skew_ms == 300_000
    settings = load_settings({"BINANCE__MAX_CLOCK_SKEW_S": "0.5"})
    assert settings.binance.max_clock_skew_ms == 500
    with pytest.raises(ConfigError, match=r"BINANCE__MAX_CLOCK_SKEW_S"):
        load_settings({"BINANCE__MAX_CLOCK_SKEW_S": "0"})


def test_roles_none_means_api_only_and_symbols_all_means_whole_market() -> None:
    settings = load_settings({"PIPELINE_ROLES": "none", "SYMBOLS": "all"})
    assert settings.roles == frozenset()
    assert settings.symbols == "ALL"


def test_streams_are_open_by_default_and_stream_requires_key_asks_for_the_key() -> None:
    assert load_settings({}).stream.requires_key is False
    settings = load_settings({"STREAM_REQUIRES_KEY": "true", "STREAM__MAX_CLIENTS": "5"})
    assert settings.stream.requires_key is True
    assert settings.stream.max_clients == 5


def test_empty_api_key_means_no_key() -> None:
    assert load_settings({"API_KEY": ""}).api.api_key is None


def test_shipped_priorities_put_the_source_first_and_the_sink_last_without_privilege() -> None:
    settings = load_settings({})
    assert settings.worker_priority_of("producer") == "normal"
    assert settings.worker_priority_of("consumer") == "low"
    assert settings.api_priority == "normal"


def test_each_worker_priority_has_its_variable_and_the_older_name_still_sets_the_sinks() -> None:
    settings = load_settings(
        {"PIPELINE_PRODUCER_PRIORITY": "low", "PIPELINE_CONSUMER_PRIORITY": "normal"}
    )
    assert settings.worker_priority_of("producer") == "low"
    assert settings.worker_priority_of("consumer") == "normal"
    # PIPELINE_WORKER_PRIORITY once lowered every worker; now it is the sink's alone.
    older = load_settings({"PIPELINE_WORKER_PRIORITY": "idle"})
    assert older.worker_priority_of("consumer") == "idle"
    assert older.worker_priority_of("producer") == "normal"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("mysql://u:hunter2@h/db", "mysql://u:***@h/db"),
        ("postgresql://u:hunter2@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u:hun@ter/2@h/db", "postgresql://u:***@h/db"),
        ("postgresql://u@h/db?password=hunter2&x=1", "postgresql://u@h/db?password=***&x=1"),
        ("u:hunter2@h", "u:***@h"),
        ("postgresql://h/db", "postgresql://h/db"),
    ],
)
def test_urls_in_messages_show_no_password(url: str, shown: str) -> None:
    assert mask_url(url) == shown


@pytest.mark.parametrize(
    "url", ["mysql://u:hunter2@h/db", "sqlite:///x?password=hunter2", "u:hunter2@db:5432/x"]
)
def test_a_database_url_with_the_wrong_scheme_fails_with_one_line_without_the_password(
    url: str,
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings({"DATABASE_URL": url})
    message = str(raised.value)
    assert message.startswith("invalid setting DATABASE_URL (database.url)")
    assert "\n" not in message
    assert "hunter2" not in message


def test_the_settings_repr_leaves_the_database_password_out() -> None:
    settings = load_settings({"DATABASE_URL": "postgresql://u:hunter2@db:5432/x"})
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in repr(DatabaseSettings(url="postgresql://u:hunter2@db/x"))


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({"KAFKA__PARTITIONS": "0"}, "invalid setting KAFKA__PARTITIONS (kafka.partitions)"),
        ({"SYMBOLS": "btc-usdt"}, "invalid setting SYMBOLS (symbols): symbol 'btc-usdt'"),
        ({"DATABASE_URL": "mysql://x"}, "invalid setting DATABASE_URL (database.url)"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "kafka"}, "invalid setting KAFKA_BOOTSTRAP_SERVERS"),
        ({"PORT": "http"}, "invalid setting PORT (api.port)"),
        ({"PIPELINE_ROLES": "producer,sink"}, "invalid setting PIPELINE_ROLES (roles"),
        ({"BINANCE_WS_URL": "http://x"}, "invalid setting BINANCE_WS_URL (binance.ws_url)"),
        ({"LOG_FORMAT": "xml"}, "invalid setting LOG_FORMAT (log_format)"),
        ({"PIPELINE_ISOLATION": "thread"}, "invalid setting PIPELINE_ISOLATION (isolation)"),
        (
            {"PIPELINE_WORKER_PRIORITY": "high"},
            "invalid setting PIPELINE_WORKER_PRIORITY (worker_priority)",
        ),
        (
            {"PIPELINE_CONSUMER_PRIORITY": "realtime"},
            "invalid setting PIPELINE_CONSUMER_PRIORITY (consumer_priority)",
        ),
        (
            {"PIPELINE_PRODUCER_PRIORITY": "high"},
            "invalid setting PIPELINE_PRODUCER_PRIORITY (producer_priority)",
        ),
        (
            {"PIPELINE_API_PRIORITY": "high"},
            "invalid setting PIPELINE_API_PRIORITY (api_priority)",
        ),
        (
            {"API__READ_TIMEOUT_MS": "0"},
            "invalid setting API__READ_TIMEOUT_MS (api.read_timeout_ms)",
        ),
        (
            {"API__LATEST_CACHE_MS": "-1"},
            "invalid setting API__LATEST_CACHE_MS (api.latest_cache_ms)",
        ),
    ],
)
def test_invalid_environment_fails_with_one_line_naming_the_variable(
    environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ)
    message = str(raised.value)
    assert message.startswith(expected)
    assert "\n" not in message


def test_unknown_yaml_key_is_named_with_its_file(tmp_path: Path) -> None:
    path = tmp_path / "settings.yaml"
    path.write_text("kafka:\n  linger: 5\n")
    with pytest.raises(
        ConfigError, match=r"^invalid setting kafka\.linger in .*settings\.yaml: unknown setting$"
    ):
        load_settings({"SETTINGS_FILE": str(path)})


def test_missing_or_broken_settings_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^SETTINGS_FILE: .* does not exist$"):
        load_settings({"SETTINGS_FILE": str(tmp_path / "nope.yaml")})
    broken = tmp_path / "broken.yaml"
    broken.write_text("kafka: [unclosed\n")
    with pytest.raises(ConfigError, match=r"^SETTINGS_FILE: cannot read"):
        load_settings({"SETTINGS_FILE": str(broken)})
