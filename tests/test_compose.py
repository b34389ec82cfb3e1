"""The Dockerfile and docker-compose.yml agree with the code (no Docker engine needed)."""

from __future__ import annotations

import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from sqlalchemy.engine import make_url

from exporter.auth import listen_refusal
from exporter.cli import build_parser
from exporter.config import Settings, load_settings
from exporter.job_storage import BucketStorage, job_storage

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text()
# Compose interpolation, resolved to the defaults: ${VAR:-default} or ${VAR-default}.
COMPOSE = yaml.safe_load(re.sub(r"\$\{\w+:?-([^}]*)\}", r"\1", COMPOSE_TEXT))
SERVICES = COMPOSE["services"]
DOCKERFILE = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
INSTRUCTIONS = [
    line.strip().split(None, 1) for line in DOCKERFILE.splitlines()
    if line.strip() and not line.strip().startswith("#")
]


def env(service: str) -> dict[str, str]:
    raw = SERVICES[service].get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: str(value) for key, value in raw.items()}


def settings_under(environment: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings a process would load in exactly this environment."""
    for name in [name for name in os.environ if name.startswith("EXPORTER_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def serve_host(command: list[object]) -> str:
    return str(build_parser().parse_args([str(part) for part in command[1:]]).host)


def instruction_args(name: str) -> list[str]:
    return [args for keyword, args in INSTRUCTIONS if keyword.upper() == name]


def data_mount(service: str) -> str:
    target = env(service).get("EXPORTER_DATA_DIR", "/data")
    sources = [v.split(":")[0] for v in SERVICES[service]["volumes"] if v.split(":")[1] == target]
    assert len(sources) == 1, f"{service} mounts nothing (or twice) at {target}"
    return sources[0]


OURS = [name for name, service in SERVICES.items() if service.get("image") == "exporter:local"]
REPLICAS = [name for name in OURS if SERVICES[name]["command"][1] == "serve"]


@pytest.mark.parametrize("service", OURS)
def test_every_command_is_a_real_exporter_subcommand_with_real_flags(service: str) -> None:
    command = [str(part) for part in SERVICES[service]["command"]]
    assert command[0] == "exporter"
    try:
        build_parser().parse_args(command[1:])
    except SystemExit:
        pytest.fail(f"{service}: the exporter CLI rejects {command[1:]}")


def test_every_exporter_variable_in_compose_is_a_settings_field() -> None:
    known = {f"EXPORTER_{name.upper()}" for name in Settings.model_fields}
    used = {key for service in SERVICES for key in env(service) if key.startswith("EXPORTER_")}
    assert used and used <= known, f"not settings: {sorted(used - known)}"


@pytest.mark.parametrize("service", OURS)
def test_the_database_url_reaches_the_postgres_service_with_its_credentials(service: str) -> None:
    raw = env(service)["EXPORTER_DATABASE_URL"]
    url, pg = make_url(raw), env("postgres")
    assert url.drivername == "postgresql+asyncpg"
    assert url.host == "postgres" and url.host in SERVICES
    assert (url.username, url.password, url.database) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"]
    )
    assert Settings(database_url=raw).resolved_database_url == raw


def test_postgres_healthcheck_runs_pg_isready_over_tcp_for_its_user_and_database() -> None:
    test = SERVICES["postgres"]["healthcheck"]["test"]
    tokens = shlex.split(test[1]) if test[0] == "CMD-SHELL" else test[1:]
    options = dict(zip(tokens[1:], tokens[2:], strict=False))
    pg = env("postgres")
    assert tokens[0] == "pg_isready"
    assert options["-U"] == pg["POSTGRES_USER"] and options["-d"] == pg["POSTGRES_DB"]
    assert options["-h"] in {"127.0.0.1", "localhost"}


@pytest.mark.parametrize("service", [*REPLICAS, "worker"])
def test_services_start_in_order_postgres_and_bucket_then_seed_then_the_rest(
    service: str,
) -> None:
    assert SERVICES["seed"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert SERVICES["seed"]["restart"] == "no"
    needs = SERVICES[service]["depends_on"]
    assert needs["seed"]["condition"] == "service_completed_successfully"
    assert needs["bucket"]["condition"] == "service_completed_successfully"
    assert needs["postgres"]["condition"] == "service_healthy"
    assert SERVICES["bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"
    if service in REPLICAS:
        assert "/ready" in " ".join(SERVICES[service]["healthcheck"]["test"])


def test_two_api_replicas_and_one_worker_run_the_jobs_apart(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert len(REPLICAS) == 2
    for replica in REPLICAS:
        assert not settings_under(env(replica), monkeypatch).run_worker, "the worker runs jobs"
    worker = SERVICES["worker"]
    assert build_parser().parse_args(worker["command"][1:]).command == "worker"
    published = [SERVICES[r]["ports"][0].rsplit(":", 1)[0] for r in REPLICAS]
    assert len(set(published)) == 2 and all(p.startswith("127.0.0.1:") for p in published)


@pytest.mark.parametrize("service", [*REPLICAS, "worker"])
def test_every_replica_and_the_worker_keep_job_files_in_the_bucket_compose_makes(
    service: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_under(env(service), monkeypatch)
    storage = job_storage(settings)
    assert isinstance(storage, BucketStorage)
    endpoint = urlsplit(env(service)["AWS_ENDPOINT_URL"])
    assert endpoint.hostname in SERVICES, "the endpoint is a compose service"
    minio = SERVICES[endpoint.hostname]
    assert minio["command"][:2] == ["server", "/data"]
    assert endpoint.port == 9000, "MinIO's S3 port"
    root = env(endpoint.hostname)
    assert (env(service)["AWS_ACCESS_KEY_ID"], env(service)["AWS_SECRET_ACCESS_KEY"]) == (
        root["MINIO_ROOT_USER"], root["MINIO_ROOT_PASSWORD"])
    assert settings.s3_addressing_style == "path", "MinIO's host name is no bucket's"
    made = " ".join(SERVICES["bucket"]["command"])
    assert f"mc alias set local {endpoint.scheme}://{endpoint.netloc} " \
        f"{root['MINIO_ROOT_USER']} {root['MINIO_ROOT_PASSWORD']}" in made
    assert f"mc mb --ignore-existing local/{storage.bucket}" in made


@pytest.mark.parametrize("service", REPLICAS)
def test_replicas_and_seed_share_one_named_volume_for_the_demo_files(service: str) -> None:
    assert env(service)["EXPORTER_DATA_DIR"] == env("seed")["EXPORTER_DATA_DIR"]
    assert data_mount(service) == data_mount("seed")
    assert data_mount(service) in COMPOSE["volumes"]


def test_the_dockerfile_copies_every_package_pyproject_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    # The folders the installed packages come from (exporter.seed from seed/, ...).
    packages = {Path(folder).parts[0]
                for folder in pyproject["tool"]["setuptools"]["package-dir"].values()}
    copied = {
        Path(source).name for args in instruction_args("COPY")
        for source in args.split()[:-1] if not source.startswith("--")
    }
    assert packages >= {"exporter", "migrations", "seed"}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied


@pytest.mark.parametrize("service", REPLICAS)
def test_the_api_listens_on_all_interfaces_at_the_exposed_and_published_port(
    service: str,
) -> None:
    host_side, _, container_port = SERVICES[service]["ports"][0].rpartition(":")
    assert host_side.startswith("127.0.0.1:"), "published beyond loopback while open to all"
    for command in (SERVICES[service]["command"], json.loads(instruction_args("CMD")[-1])):
        args = build_parser().parse_args([str(part) for part in command[1:]])
        assert (args.command, args.host, str(args.port)) == ("serve", "0.0.0.0", container_port)
    assert container_port in " ".join(instruction_args("EXPOSE")).split()
    assert f"127.0.0.1:{container_port}/ready" in " ".join(
        SERVICES[service]["healthcheck"]["test"])


@pytest.mark.parametrize("service", REPLICAS)
def test_the_api_service_would_start_on_all_interfaces_even_without_keys(
    service: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_under(env(service), monkeypatch)  # EXPORTER_API_KEYS unset: empty
    assert listen_refusal(serve_host(SERVICES[service]["command"]), settings) is None


@pytest.mark.parametrize("service", REPLICAS)
def test_the_api_service_takes_api_keys_from_the_environment_of_compose(service: str) -> None:
    raw = yaml.safe_load(COMPOSE_TEXT)["services"][service]["environment"]
    assert raw["EXPORTER_API_KEYS"] == "${EXPORTER_API_KEYS:-}"


def test_the_image_installs_the_s3_extra_that_compose_relies_on() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "optional-dependencies']['s3']" in " ".join(instruction_args("RUN"))
    assert any('".[s3]"' in args for args in instruction_args("RUN"))
    assert pyproject["project"]["optional-dependencies"]["s3"]


def test_the_image_builds_the_cpp_sqlite_functions_and_keeps_no_compiler() -> None:
    """python:3.11-slim has no compiler: the C++ module is optional, so without one the
    image would build and silently render floats and bytes in Python, on one reader."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    [module] = pyproject["tool"]["setuptools"]["ext-modules"]
    [install] = [args for args in instruction_args("RUN") if '".[s3]"' in args]
    steps = [step.strip() for step in install.split("&&")]
    build = steps.index('pip install --no-cache-dir ".[s3]"')
    assert "g++" in steps[build - 1] and "libsqlite3-dev" in steps[build - 1]
    # -P: the installed package, not ./exporter (the sources, no module built there).
    assert steps[build + 1] == f'python -P -c "import {module["name"]}"'
    assert steps[build + 2].startswith("apt-get purge") and "g++" in steps[build + 2]
    assert "exporter/*.so" in (ROOT / ".dockerignore").read_text().split()  # not a host's


def test_the_image_alone_does_not_serve_all_interfaces_without_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    image_env = dict(
        pair.split("=", 1) for args in instruction_args("ENV") for pair in shlex.split(args)
    )
    host = serve_host(json.loads(instruction_args("CMD")[-1]))
    assert listen_refusal(host, settings_under(image_env, monkeypatch)) is not None
    with_keys = {**image_env, "EXPORTER_API_KEYS": "key-one"}
    assert listen_refusal(host, settings_under(with_keys, monkeypatch)) is None
