"""The container stack: docker-compose.yml, Dockerfile and .dockerignore, read as a specification.

No Docker engine is needed (or used): the files are parsed and cross-checked against each
other and against the configuration contract (README, pipeline.core.settings.ENV_NAMES), so a wrong listener, a
mistyped env var or a dependency that never becomes healthy fails here, not at `docker
compose up`.
"""

from __future__ import annotations

import base64
import fnmatch
import re
import shlex
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

TOPIC = "crypto_prices"  # the app's KAFKA_TOPIC default (settings.yaml)
DLQ_TOPIC = f"{TOPIC}.dlq"
TOPIC_PARTITIONS = 3
APP_PORT = 8000
PYTHON_BASE_IMAGE = "python:3.12-slim"

Services = dict[str, dict[str, Any]]
Stages = list[list[tuple[str, str]]]

CORE_SERVICES = {"kafka", "postgres", "kafka-init", "app"}
OPTIONAL_SERVICES = {"kcat": "tools", "kafka-ui": "ui", "consumer": "consumer"}


def app_env_contract() -> frozenset[str]:
    """Every environment variable the app reads: the names users and scripts rely on.

    From the README's configuration table plus the runtime ones (HOST, PORT, LOG_FORMAT,
    LOG_LEVEL). The compose file may set only these for the app. This is the single place
    the list lives; it can be cross-checked against (or derived from) pipeline.settings.
    """
    return frozenset(
        {
            "KAFKA_BOOTSTRAP_SERVERS",
            "KAFKA_TOPIC",
            "DATABASE_URL",
            "SYMBOLS",
            "BINANCE_WS_URL",
            "BINANCE_REST_URL",
            "PIPELINE_ROLES",
            "API_KEY",
            "HOST",
            "PORT",
            "SETTINGS_FILE",
            "LOG_FORMAT",
            "LOG_LEVEL",
        }
    )


PIPELINE_ROLE_VALUES = {"producer", "consumer"}


# --------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(data, dict) and isinstance(data.get("services"), dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> Services:
    return compose["services"]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def app_services(services: Services) -> Services:
    """Services that run the project's own image (built from the Dockerfile)."""
    built = {name: svc for name, svc in services.items() if "build" in svc}
    assert "app" in built
    return built


def resolve(value: str) -> str:
    """A compose value as `docker compose` sees it with no variables set on the host."""
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", value)
    value = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", "", value)
    value = re.sub(r"(?<!\$)\$[A-Za-z_][A-Za-z0-9_]*", "", value)
    return value.replace("$$", "$")


def environment(service: dict[str, Any]) -> dict[str, str]:
    """`environment:` in either compose form, values as raw strings ('' when passed through)."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, None) for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency -> condition (the short list form means `service_started`)."""
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return dict.fromkeys(deps, "service_started")
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def published_ports(service: dict[str, Any]) -> dict[int, tuple[str, int]]:
    """Container port -> (host ip, host port) for the short and the long `ports:` syntax."""
    result: dict[int, tuple[str, int]] = {}
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            ip = str(entry.get("host_ip", "0.0.0.0"))
            result[int(entry["target"])] = (ip, int(entry["published"]))
            continue
        parts = str(entry).split("/")[0].rsplit(":", 2)
        if len(parts) == 3:
            ip, host, container = parts
        elif len(parts) == 2:
            ip, (host, container) = "0.0.0.0", parts
        else:
            ip, host, container = "0.0.0.0", parts[0], parts[0]
        result[int(container)] = (ip, int(host))
    return result


def listeners(spec: str) -> dict[str, tuple[str, int]]:
    """'NAME://host:port,...' -> {NAME: (host, port)}."""
    result: dict[str, tuple[str, int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, address = item.split("://", 1)
        host, port = address.rsplit(":", 1)
        result[name] = (host, int(port))
    return result


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command") or ""
    return command if isinstance(command, str) else "\n".join(map(str, command))


def kafka_env(services: Services) -> dict[str, str]:
    return environment(services["kafka"])


def container_listener(services: Services) -> tuple[str, str, int]:
    """The advertised listener other containers use: (name, host, port)."""
    kafka = services["kafka"]
    env = kafka_env(services)
    names_for_kafka = {"kafka", kafka.get("hostname", "kafka")}
    found = [
        (name, host, port)
        for name, (host, port) in listeners(env["KAFKA_ADVERTISED_LISTENERS"]).items()
        if host in names_for_kafka
    ]
    assert len(found) == 1, f"exactly one listener advertised under the service name: {found}"
    return found[0]


def duration_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(float(n) * units[u] for n, u in parts)


def topic_creations(services: Services) -> dict[str, list[str]]:
    """Topic name -> argv of the `kafka-topics --create` that kafka-init runs for it."""
    created: dict[str, list[str]] = {}
    for line in command_text(services["kafka-init"]).splitlines():
        argv = shlex.split(line)
        if argv[:1] == ["kafka-topics"] and "--create" in argv:
            created[argv[argv.index("--topic") + 1]] = argv
    return created


@pytest.fixture(scope="module")
def dockerfile_stages() -> Stages:
    """The Dockerfile as stages of (INSTRUCTION, arguments), continuations joined."""
    logical: list[str] = []
    buffer = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not buffer and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        logical.append(buffer + line)
        buffer = ""
    stages: Stages = []
    for line in logical:
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            stages.append([])
        assert stages, f"instruction before the first FROM: {line}"
        stages[-1].append((instruction, args.strip()))
    return stages


def instructions(stage: list[tuple[str, str]], name: str) -> list[str]:
    return [args for instruction, args in stage if instruction == name]


def copy_sources(stages: Stages) -> set[str]:
    """Build-context paths the Dockerfile copies (COPY without --from)."""
    sources: set[str] = set()
    for stage in stages:
        for args in instructions(stage, "COPY"):
            argv = shlex.split(args)
            if any(word.startswith("--from") for word in argv):
                continue
            paths = [word for word in argv if not word.startswith("--")]
            sources.update(path.rstrip("/") for path in paths[:-1])
    return sources


# --------------------------------------------------------------------------------------
# Services and images
# --------------------------------------------------------------------------------------


def test_default_stack_is_kafka_postgres_topic_init_and_app(services: Services) -> None:
    default = {name for name, svc in services.items() if not svc.get("profiles")}
    assert default == CORE_SERVICES


def test_optional_services_sit_behind_their_profiles(services: Services) -> None:
    for name, profile in OPTIONAL_SERVICES.items():
        assert name in services, name
        assert services[name].get("profiles") == [profile], name


def test_kafka_is_confluent_platform_8(services: Services) -> None:
    assert re.fullmatch(r"confluentinc/cp-kafka:8\.\d+\.\d+", services["kafka"]["image"])


def test_topic_init_uses_the_broker_image_so_tools_match_the_broker(services: Services) -> None:
    assert services["kafka-init"]["image"] == services["kafka"]["image"]


def test_postgres_is_17_or_18(services: Services) -> None:
    assert re.fullmatch(r"postgres:(17|18)(\.\d+)*(-alpine)?", services["postgres"]["image"])


def test_optional_tool_images_are_pinned(services: Services) -> None:
    assert services["kcat"]["image"] == "edenhill/kcat:1.7.1"
    ui_image = services["kafka-ui"]["image"]
    assert ui_image.split(":")[0] in {"ghcr.io/kafbat/kafka-ui", "provectuslabs/kafka-ui"}


# --------------------------------------------------------------------------------------
# Kafka (KRaft)
# --------------------------------------------------------------------------------------


def test_kafka_runs_kraft_as_broker_and_controller(services: Services) -> None:
    env = kafka_env(services)
    roles = {role.strip() for role in env["KAFKA_PROCESS_ROLES"].split(",")}
    assert roles == {"broker", "controller"}
    voters = env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split(",")
    assert [voter.split("@")[0] for voter in voters] == [env["KAFKA_NODE_ID"]]
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    declared = listeners(env["KAFKA_LISTENERS"])
    assert controller in declared
    assert voters[0].split("@")[1] == "{}:{}".format(*declared[controller])
    assert controller not in listeners(env["KAFKA_ADVERTISED_LISTENERS"])


def test_no_service_uses_zookeeper(services: Services) -> None:
    for name, svc in services.items():
        assert "zookeeper" not in str(svc.get("image", "")).lower(), name
        assert not [key for key in environment(svc) if "ZOOKEEPER" in key], name


def test_cluster_id_is_a_fixed_22_char_base64url_uuid(services: Services) -> None:
    cluster_id = kafka_env(services)["CLUSTER_ID"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16


def test_every_kafka_listener_has_a_security_protocol(services: Services) -> None:
    env = kafka_env(services)
    protocol_map = dict(
        item.split(":", 1) for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    )
    declared = listeners(env["KAFKA_LISTENERS"])
    assert set(declared) <= set(protocol_map)
    assert set(listeners(env["KAFKA_ADVERTISED_LISTENERS"])) <= set(declared)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in declared


def test_broker_never_auto_creates_topics(services: Services) -> None:
    assert kafka_env(services)["KAFKA_AUTO_CREATE_TOPICS_ENABLE"].lower() == "false"


def test_single_broker_internal_topics_have_one_replica(services: Services) -> None:
    env = kafka_env(services)
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "1"
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"


def test_host_clients_reach_kafka_on_the_published_port(services: Services) -> None:
    env = kafka_env(services)
    host, port = listeners(env["KAFKA_ADVERTISED_LISTENERS"])["PLAINTEXT_HOST"]
    assert host in {"localhost", "127.0.0.1"}
    bound_port = listeners(env["KAFKA_LISTENERS"])["PLAINTEXT_HOST"][1]
    assert published_ports(services["kafka"])[bound_port][1] == port == 9092


def test_containers_bootstrap_from_the_listener_kafka_advertises_to_them(
    services: Services, app_services: Services
) -> None:
    name, host, port = container_listener(services)
    assert (host, port) == ("kafka", 29092)
    assert listeners(kafka_env(services)["KAFKA_LISTENERS"])[name][1] == port
    internal = f"{host}:{port}"
    for svc_name, svc in app_services.items():
        assert resolve(environment(svc)["KAFKA_BOOTSTRAP_SERVERS"]) == internal, svc_name
    for argv in topic_creations(services).values():
        assert argv[argv.index("--bootstrap-server") + 1] == internal
    kcat = services["kcat"]["command"]
    assert kcat[kcat.index("-b") + 1] == internal
    ui_env = environment(services["kafka-ui"])
    assert ui_env["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == internal


def test_kafka_and_postgres_keep_their_data_in_named_volumes(
    compose: dict[str, Any], services: Services
) -> None:
    named = set(compose.get("volumes") or {})
    for name, data_dir in (("kafka", "/var/lib/kafka/data"), ("postgres", "/var/lib/postgresql")):
        mounts = [str(v).split(":") for v in services[name].get("volumes") or []]
        assert any(src in named and dst.startswith(data_dir) for src, dst, *_ in mounts), name
    assert kafka_env(services)["KAFKA_LOG_DIRS"] == "/var/lib/kafka/data"


# --------------------------------------------------------------------------------------
# Topics
# --------------------------------------------------------------------------------------


def test_topic_init_creates_the_topic_and_its_dlq_idempotently(services: Services) -> None:
    created = topic_creations(services)
    assert set(created) == {TOPIC, DLQ_TOPIC}
    for argv in created.values():
        assert "--if-not-exists" in argv
        assert argv[argv.index("--replication-factor") + 1] == "1"
    topic = created[TOPIC]
    assert topic[topic.index("--partitions") + 1] == str(TOPIC_PARTITIONS)


def test_topic_init_is_a_one_shot_job(services: Services) -> None:
    init = services["kafka-init"]
    assert str(init.get("restart", "no")) == "no"
    assert "healthcheck" not in init
    assert depends_on(init) == {"kafka": "service_healthy"}


def test_app_topic_is_the_one_created(app_services: Services) -> None:
    for name, svc in app_services.items():
        assert resolve(environment(svc).get("KAFKA_TOPIC", TOPIC)) == TOPIC, name


# --------------------------------------------------------------------------------------
# Start order and health
# --------------------------------------------------------------------------------------


def test_every_dependency_waits_for_a_condition_its_target_can_meet(services: Services) -> None:
    for name, svc in services.items():
        for target, condition in depends_on(svc).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert condition in {"service_healthy", "service_completed_successfully"}, name
            if condition == "service_healthy":
                assert "healthcheck" in services[target], f"{target} (needed by {name})"
            else:
                assert str(services[target].get("restart", "no")) == "no", target


def test_app_starts_after_healthy_kafka_and_postgres_and_created_topics(
    app_services: Services,
) -> None:
    for name, svc in app_services.items():
        assert depends_on(svc) == {
            "kafka": "service_healthy",
            "postgres": "service_healthy",
            "kafka-init": "service_completed_successfully",
        }, name


def test_kafka_health_is_a_real_broker_request(services: Services) -> None:
    probe = " ".join(services["kafka"]["healthcheck"]["test"])
    assert "kafka-broker-api-versions" in probe or "kafka-topics" in probe
    assert "--bootstrap-server" in probe


def test_postgres_health_is_pg_isready_for_the_app_database(services: Services) -> None:
    probe = " ".join(services["postgres"]["healthcheck"]["test"])
    env = environment(services["postgres"])
    assert "pg_isready" in probe
    assert env["POSTGRES_USER"] in probe and env["POSTGRES_DB"] in probe


def test_app_health_probes_liveness_without_curl(app_services: Services) -> None:
    for name, svc in app_services.items():
        probe = svc["healthcheck"]["test"]
        assert probe[0] == "CMD" and probe[1].startswith("python"), name
        assert f"127.0.0.1:{APP_PORT}/health" in " ".join(probe), name


def test_app_restarts_and_gets_time_to_drain_on_stop(app_services: Services) -> None:
    for name, svc in app_services.items():
        assert svc["restart"] == "unless-stopped", name
        assert duration_seconds(svc["stop_grace_period"]) >= 30, name


def test_the_shipped_priorities_protect_the_source_and_need_no_privilege(
    app_services: Services,
) -> None:
    """config/settings.yaml ships normal priority for the source's worker and the API and a
    lower one for the sink's: a process may always lower its own priority, so the non-root
    image needs no real-time limit (rtprio) or capability to run as shipped."""
    shipped = yaml.safe_load((ROOT / "config" / "settings.yaml").read_text())
    assert shipped["api_priority"] == "normal"
    assert shipped["producer_priority"] == "normal"
    assert shipped["consumer_priority"] in ("low", "idle")
    assert "worker_priority" not in shipped  # the older name would override consumer_priority
    for name, svc in app_services.items():
        assert "rtprio" not in svc.get("ulimits", {}), name
        assert "SYS_NICE" not in svc.get("cap_add", []), name


# --------------------------------------------------------------------------------------
# App configuration
# --------------------------------------------------------------------------------------


def test_app_environment_uses_only_variables_the_app_reads(app_services: Services) -> None:
    contract = app_env_contract()
    for name, svc in app_services.items():
        names = set(environment(svc))
        assert names <= contract, f"{name}: unknown {sorted(names - contract)}"
        assert {"KAFKA_BOOTSTRAP_SERVERS", "DATABASE_URL", "PIPELINE_ROLES"} <= names, name


def test_database_url_is_asyncpg_with_the_postgres_service_credentials(
    services: Services, app_services: Services
) -> None:
    pg = environment(services["postgres"])
    for name, svc in app_services.items():
        url = urlsplit(resolve(environment(svc)["DATABASE_URL"]))
        assert url.scheme == "postgresql+asyncpg", name
        assert (url.hostname, url.port) == ("postgres", 5432), name
        assert (url.username, url.password) == (pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"])
        assert url.path == "/" + pg["POSTGRES_DB"], name


def test_app_listens_on_all_interfaces_of_the_container_with_json_logs(
    app_services: Services,
) -> None:
    for name, svc in app_services.items():
        env = {key: resolve(value) for key, value in environment(svc).items()}
        assert (env["HOST"], env["PORT"]) == ("0.0.0.0", str(APP_PORT)), name
        assert env["LOG_FORMAT"] == "json", name


def test_pipeline_roles_are_valid_and_consumer_instances_only_consume(
    app_services: Services,
) -> None:
    for name, svc in app_services.items():
        roles = set(resolve(environment(svc)["PIPELINE_ROLES"]).split(","))
        assert roles <= PIPELINE_ROLE_VALUES or roles == {"none"}, name
    assert resolve(environment(app_services["app"])["PIPELINE_ROLES"]) == "producer,consumer"
    assert resolve(environment(app_services["consumer"])["PIPELINE_ROLES"]) == "consumer"


def test_api_key_comes_from_the_host_never_from_the_file(app_services: Services) -> None:
    for name, svc in app_services.items():
        raw = environment(svc)["API_KEY"]
        assert re.fullmatch(r"\$\{API_KEY(:?-)?\}", raw), name


def test_consumer_instances_scale_from_the_same_image(app_services: Services) -> None:
    app, consumer = app_services["app"], app_services["consumer"]
    assert consumer["image"] == app["image"] and consumer["build"] == app["build"]
    assert "container_name" not in consumer and not consumer.get("ports")


# --------------------------------------------------------------------------------------
# Published ports
# --------------------------------------------------------------------------------------


def test_published_ports(services: Services) -> None:
    expected = {"kafka": 9092, "postgres": 5432, "app": APP_PORT, "kafka-ui": 8080}
    for name, port in expected.items():
        assert published_ports(services[name]).get(port, (None, None))[1] == port, name


def test_ports_are_published_on_loopback_only(services: Services) -> None:
    for name, svc in services.items():
        for ip, _ in published_ports(svc).values():
            assert ip == "127.0.0.1", f"{name} is published on {ip}"


# --------------------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------------------


def test_image_is_multi_stage_on_python_3_12_slim(dockerfile_stages: Stages) -> None:
    assert len(dockerfile_stages) >= 2
    for stage in dockerfile_stages:
        image = instructions(stage, "FROM")[0].split()[0]
        assert image == PYTHON_BASE_IMAGE


def test_dependencies_come_from_the_lock_file_main_group_only(dockerfile_stages: Stages) -> None:
    builder = dockerfile_stages[0]
    assert "poetry.lock" in " ".join(instructions(builder, "COPY"))
    runs = " ".join(instructions(builder, "RUN"))
    assert re.search(r"poetry[^\s]*\s+install\b[^&;]*--only main", runs)
    assert "--no-root" in runs
    poetry_spec = " ".join([*instructions(builder, "ARG"), runs])
    assert re.search(r"poetry(==2\.|>=2\.\d+,<3)", poetry_spec), "Poetry 2, pinned"
    assert (ROOT / "poetry.lock").is_file() and (ROOT / "pyproject.toml").is_file()


def test_image_installs_the_product_wheel_without_the_dev_tools(dockerfile_stages: Stages) -> None:
    # The wheel carries the defaults and the migrations (pipeline/core/settings.yaml,
    # pipeline/storage/migrations); devtools/ is never copied into the image.
    sources = copy_sources(dockerfile_stages)
    assert {"api", "pipeline"} <= sources
    assert not any(source.startswith(("devtools", "tests", "bench")) for source in sources)
    runs = " ".join(instructions(dockerfile_stages[0], "RUN"))
    assert re.search(r"poetry\s+build\b[^&;]*-f wheel", runs)
    assert re.search(r"pip install\b[^&;]*dist/\*\.whl", runs)


def test_runtime_stage_copies_the_built_venv_and_runs_as_non_root(
    dockerfile_stages: Stages,
) -> None:
    runtime = dockerfile_stages[-1]
    assert any(args.startswith("--from=builder") for args in instructions(runtime, "COPY"))
    user = instructions(runtime, "USER")[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user == "10001" or "10001" in " ".join(instructions(runtime, "RUN"))


def test_runtime_serves_the_api_with_a_health_check(dockerfile_stages: Stages) -> None:
    runtime = dockerfile_stages[-1]
    assert str(APP_PORT) in instructions(runtime, "EXPOSE")[-1].split()
    assert "/health" in instructions(runtime, "HEALTHCHECK")[-1]
    assert "api.main:app" in instructions(runtime, "CMD")[-1]
    assert "PYTHONUNBUFFERED=1" in " ".join(instructions(runtime, "ENV"))


def test_dockerignore_keeps_local_state_out_but_not_what_the_image_copies(
    dockerfile_stages: Stages,
) -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    for required in (".venv", ".git", ".stack", ".tools", "bench/results"):
        assert required in patterns, required
    assert any("__pycache__" in pattern for pattern in patterns)

    def ignored(path: str) -> bool:
        verdict = False
        for pattern in patterns:
            negated, body = pattern.startswith("!"), pattern.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, body) or path.startswith(body + "/"):
                verdict = not negated
        return verdict

    for source in copy_sources(dockerfile_stages) | {"pyproject.toml", "poetry.lock"}:
        assert not ignored(source), f".dockerignore hides {source} from the build"
