"""The docker stack (docker/compose.yaml, docker/.env.example, the Dockerfiles).

Two kinds of checks:

* static ones, with PyYAML only: the file's shape (services, the ``gpu`` profile, the GPU
  reservation, dependencies, healthchecks) and that no secret is written in it: every
  secret is a ``${VAR:?...}`` reference to a variable that docker/.env.example defines;
* ``docker compose config`` ones, skipped where docker with the compose plugin (or a
  compose v2 ``docker-compose``) is not installed: what compose itself makes of the file
  with docker/.env.example, with and without ``--profile gpu``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"

ALWAYS = {"minio", "postgres", "prefect", "init", "cpu-worker"}
GPU_ONLY = {"gpu-worker"}
PIPELINE = ("init", "cpu-worker", "gpu-worker")
WORKERS = ("cpu-worker", "gpu-worker")
SECRET_VARS = {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD"}
# environment keys whose values are credentials
SECRET_KEY_RE = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|ROOT_USER|TOKEN", re.IGNORECASE)
# a variable name that looks like a credential
SECRET_VAR_RE = re.compile(r"PASSWORD|SECRET|_USER$|_KEY$|TOKEN", re.IGNORECASE)
# ${VAR}, ${VAR:?msg}, ${VAR:-default}, ...: name and the operator (if any)
REF_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-+?])[^}]*)?\}")
ONLY_REF_RE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}$")

PIPELINE_ENV = {
    "PREFECT_API_URL": "http://prefect:4200/api",
    "SCRIBELINE_S3_ENDPOINT": "minio:9000",
    "SCRIBELINE_WAREHOUSE_DATA": "s3://scribeline-lake/",
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": "",
}


# ---------------------------------------------------------------- helpers


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE in {ENV_EXAMPLE.name}: {line!r}"
        values[key.strip()] = value.strip()
    return values


def environment(service: dict) -> dict[str, str]:
    """A service's environment as a dict, whether written as a mapping or a list."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: ("" if v is None else str(v)) for k, v in env.items()}


def command(service: dict) -> list[str]:
    cmd = service.get("command")
    return shlex.split(cmd) if isinstance(cmd, str) else list(cmd or [])


def depends_on(service: dict) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def gpu_devices(service: dict) -> list[dict]:
    return (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []


def assert_reserves_nvidia_gpu(service: dict) -> None:
    devices = gpu_devices(service)
    assert devices, "gpu-worker reserves no device (deploy.resources.reservations.devices)"
    nvidia = [d for d in devices if d.get("driver") == "nvidia" and "gpu" in (d.get("capabilities") or [])]
    assert nvidia, f"no nvidia device with capability gpu in {devices}"
    count = nvidia[0].get("count")
    # `count: all` reads back as "all" or -1 depending on the compose version
    assert count in ("all", -1) or (isinstance(count, int) and count >= 1) or str(count).isdigit(), count


def strings(node):
    """Every string (keys included) in a parsed YAML document."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from strings(k)
            yield from strings(v)
    elif isinstance(node, list):
        for v in node:
            yield from strings(v)
    elif isinstance(node, str):
        yield node


def literal_secrets(text: str) -> list[str]:
    """Passwords written in a connection string, 'password=...' or 'scheme://user:pw@host', that
    are not a ${...} reference."""
    found = [m.group(0) for m in re.finditer(r"password\s*=\s*(?!\$\{)[^\s'\"]+", text, re.IGNORECASE)]
    found += [m.group(0) for m in re.finditer(r"://[^\s:/@]+:(?!\$\{)[^\s@/]+@", text)]
    return found


# ---------------------------------------------------------------- static checks (no docker)


@pytest.fixture(scope="module")
def raw() -> str:
    return COMPOSE.read_text()


@pytest.fixture(scope="module")
def code(raw) -> str:
    """The compose file without its comment lines (compose interpolates no comment)."""
    return "\n".join(line for line in raw.splitlines() if not line.lstrip().startswith("#"))


@pytest.fixture(scope="module")
def compose(raw) -> dict:
    return yaml.safe_load(raw)  # safe_load resolves the `<<: *anchor` merges


def test_services_and_gpu_profile(compose):
    services = compose["services"]
    assert set(services) == ALWAYS | GPU_ONLY
    for name in ALWAYS:
        assert not services[name].get("profiles"), f"{name} must start without a profile"
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert_reserves_nvidia_gpu(services["gpu-worker"])
    for name in ALWAYS:
        assert not gpu_devices(services[name]), f"{name} must not need a GPU"


def test_images_builds_and_commands(compose):
    s = compose["services"]
    assert s["minio"]["image"].startswith("minio/minio")
    assert s["postgres"]["image"] == "postgres:16"
    assert s["prefect"]["image"] == "prefecthq/prefect:3.8.8-python3.11"
    assert command(s["prefect"]) == ["prefect", "server", "start", "--host", "0.0.0.0"]
    for name, dockerfile in (("init", "docker/Dockerfile"), ("cpu-worker", "docker/Dockerfile"),
                             ("gpu-worker", "docker/Dockerfile.gpu")):
        build = s[name]["build"]
        assert build["context"] == ".." and build["dockerfile"] == dockerfile, (name, build)
        assert (ROOT / dockerfile).is_file()
    assert command(s["init"]) == ["scribeline", "deploy"]
    assert s["init"]["restart"] == "no"
    assert command(s["cpu-worker"]) == ["scribeline", "worker", "--pool", "scribeline-cpu", "--no-preload"]
    assert command(s["gpu-worker"]) == ["scribeline", "worker", "--pool", "scribeline-gpu"]


def test_shared_anchor_and_pipeline_environment(compose, raw):
    assert "x-scribeline" in compose and re.search(r"^x-scribeline:\s*&\w", raw, re.MULTILINE)
    for name in PIPELINE:
        env = environment(compose["services"][name])
        for key, value in PIPELINE_ENV.items():
            assert env.get(key) == value, (name, key, env.get(key))
        assert env["SCRIBELINE_S3_ACCESS_KEY"].startswith("${MINIO_ROOT_USER")
        assert env["SCRIBELINE_S3_SECRET_KEY"].startswith("${MINIO_ROOT_PASSWORD")
        catalog = env["SCRIBELINE_WAREHOUSE_CATALOG"]
        assert catalog.startswith("postgres:dbname=scribeline_lake host=postgres user=postgres password=${POSTGRES_PASSWORD")
    assert environment(compose["services"]["gpu-worker"])["SCRIBELINE_DEVICE"] == "cuda"
    # the API URL's host is the prefect service
    host = PIPELINE_ENV["PREFECT_API_URL"].split("//")[1].split(":")[0]
    assert host in compose["services"]


def test_prefect_server_uses_postgres(compose):
    env = environment(compose["services"]["prefect"])
    url = env["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert re.fullmatch(r"postgresql\+asyncpg://postgres:\$\{POSTGRES_PASSWORD:\?[^}]*\}@postgres:5432/prefect", url), url
    assert env["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and env["DO_NOT_TRACK"] == "1"


def test_postgres_init_creates_both_databases(compose):
    pg = compose["services"]["postgres"]
    mounts = [v for v in pg["volumes"] if isinstance(v, str) and "/docker-entrypoint-initdb.d/" in v]
    assert mounts, "the init SQL is not mounted into /docker-entrypoint-initdb.d"
    sql = (DOCKER / mounts[0].split(":")[0]).read_text()
    created = set(re.findall(r"CREATE\s+DATABASE\s+(\w+)", sql, re.IGNORECASE))
    assert created == {"prefect", "scribeline_lake"}


def test_healthchecks_and_start_order(compose):
    s = compose["services"]
    assert s["minio"]["healthcheck"]["test"]
    assert "pg_isready" in " ".join(s["postgres"]["healthcheck"]["test"])
    assert "/api/health" in " ".join(s["prefect"]["healthcheck"]["test"])
    assert depends_on(s["prefect"]) == {"postgres": "service_healthy"}
    init_deps = depends_on(s["init"])
    assert init_deps["minio"] == init_deps["prefect"] == "service_healthy"
    for name in WORKERS:
        deps = depends_on(s[name])
        assert deps["init"] == "service_completed_successfully", name
        assert deps["prefect"] == deps["minio"] == "service_healthy", name


def test_named_volumes(compose):
    declared = set(compose.get("volumes") or {})
    used = set()
    for service in compose["services"].values():
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source and not source.startswith((".", "/", "~")):
                used.add(source)
    assert used and used <= declared, f"undeclared volumes: {used - declared}"
    assert any(v.endswith(":/data") for v in compose["services"]["minio"]["volumes"])
    assert any(v.endswith(":/var/lib/postgresql/data") for v in compose["services"]["postgres"]["volumes"])


def test_no_literal_secrets_in_compose_file(compose, raw, code):
    assert literal_secrets(raw) == []  # comments included
    for text in strings(compose):
        assert literal_secrets(text) == [], text
    assert not re.search(r"\$(?![{$])[A-Za-z_]", code), "use ${VAR:?...}, not $VAR"
    for name, service in compose["services"].items():
        for key, value in environment(service).items():
            if SECRET_KEY_RE.search(key):
                assert ONLY_REF_RE.match(value), f"{name}.{key} must be a ${{VAR:?...}} reference, not {value!r}"


def test_every_variable_comes_from_env_example_and_secrets_are_required(code):
    example = env_example()
    refs = REF_RE.findall(code)
    assert {name for name, _ in refs} >= SECRET_VARS
    for name, op in refs:
        assert name in example, f"${{{name}}} is used in compose.yaml but not defined in .env.example"
        if SECRET_VAR_RE.search(name):
            assert op == ":?", f"${{{name}}} must be written ${{{name}:?...}} so a missing secret stops compose"


def test_env_example_holds_placeholders():
    example = env_example()
    assert SECRET_VARS <= set(example)
    for key in SECRET_VARS:
        value = example[key]
        # goes verbatim into a URL and a libpq conninfo string
        assert re.fullmatch(r"[A-Za-z0-9_-]+", value), (key, value)
    for key in ("MINIO_ROOT_PASSWORD", "POSTGRES_PASSWORD"):
        assert "change-me" in example[key], f"{key} in .env.example must be an obvious placeholder"
    assert len(example["MINIO_ROOT_PASSWORD"]) >= 8  # MinIO refuses shorter root passwords
    assert len(example["MINIO_ROOT_USER"]) >= 3


def test_dockerfiles_install_the_console_script():
    cpu = (DOCKER / "Dockerfile").read_text()
    gpu = (DOCKER / "Dockerfile.gpu").read_text()
    for text in (cpu, gpu):
        assert re.search(r"pip install [^\n]*-e \.", text)
        assert '"torch==2.13.0"' in text
    assert "download.pytorch.org/whl/cpu" in cpu
    assert 'CMD ["scribeline", "worker", "--pool", "scribeline-cpu"]' in cpu
    assert 'CMD ["scribeline", "worker", "--pool", "scribeline-gpu"]' in gpu


# ---------------------------------------------------------------- docker compose config


def _compose_cli() -> list[str] | None:
    def works(cmd: list[str]) -> str | None:
        try:
            out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if shutil.which("docker") and works(["docker", "compose"]):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        version = works(["docker-compose"]) or ""
        if version.lstrip("v").startswith("2"):  # v1 has no `config --format json`
            return ["docker-compose"]
    return None


@pytest.fixture(scope="module")
def config():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` (docker with the compose plugin) nor a compose v2 "
                    "`docker-compose` is on PATH; the static checks above cover the file's shape")
    # only the example env file: no profile, project or secret from the calling environment
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("COMPOSE_") and k not in env_example()}

    def run(*extra: str) -> dict:
        out = subprocess.run(
            [*cli, "-f", str(COMPOSE), "--env-file", str(ENV_EXAMPLE), *extra, "config", "--format", "json"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    return {"default": run(), "gpu": run("--profile", "gpu")}


def test_compose_config_services(config):
    assert set(config["default"]["services"]) == ALWAYS
    assert set(config["gpu"]["services"]) == ALWAYS | GPU_ONLY
    assert_reserves_nvidia_gpu(config["gpu"]["services"]["gpu-worker"])
    assert environment(config["gpu"]["services"]["gpu-worker"])["SCRIBELINE_DEVICE"] == "cuda"


def test_compose_config_environment(config):
    example = env_example()
    services = config["gpu"]["services"]
    for name in PIPELINE:
        env = environment(services[name])
        assert env["PREFECT_API_URL"] == "http://prefect:4200/api" and "prefect" in services
        assert env["SCRIBELINE_S3_ACCESS_KEY"] == example["MINIO_ROOT_USER"]
        assert env["SCRIBELINE_S3_SECRET_KEY"] == example["MINIO_ROOT_PASSWORD"]
        assert env["SCRIBELINE_WAREHOUSE_CATALOG"] == (
            f"postgres:dbname=scribeline_lake host=postgres user=postgres password={example['POSTGRES_PASSWORD']}")
    assert environment(services["prefect"])["PREFECT_API_DATABASE_CONNECTION_URL"] == (
        f"postgresql+asyncpg://postgres:{example['POSTGRES_PASSWORD']}@postgres:5432/prefect")
    # every credential in the resolved stack is one of the .env.example values
    allowed = set(example.values())
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_KEY_RE.search(key):
                assert value in allowed, f"{name}.{key} holds a value that is not from .env.example"
            for m in re.finditer(r"password=(\S+)|://[^\s:/@]+:([^\s@/]+)@", value):
                assert (m.group(1) or m.group(2)) in allowed, f"{name}.{key} holds a literal password"
