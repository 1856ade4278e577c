"""infra/: what can be checked without a Docker engine or a Kubernetes cluster (docs/deploy.md).

Every file parses; infra/dagster.yaml passes Dagster's own instance schema and runs for real on a
PostgreSQL server started here; the code location validates as a module and through the
workspace; compose, Helm values and the RayCluster agree with each other and with the code
(variables, image, addresses, secrets only from the environment); the cluster recipe, with the
settings compose gives it, writes a raw version to a real S3 API (moto).
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Iterator

import pytest
import yaml

from assets.resources import ENV_VARS, resource_from_env
from textmill.config import RecipeError, Recipe, expand_env, load_recipe
from llm_server import free_port  # one helper for a free 127.0.0.1 port

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
SAMPLE = REPO / "textmill" / "sample"
DAGSTER = str(Path(sys.executable).with_name("dagster"))
# the services that run the textmill image (the others are MinIO, mc and PostgreSQL)
TEXTMILL_SERVICES = ("ray-head", "ray-worker", "dagster-webserver", "dagster-daemon")
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


# compose --------------------------------------------------------------------------------------
_COMPOSE_REF = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def _interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (${X}, ${X:-default}, ${X:?error}, $$) over a loaded file."""
    if isinstance(value, dict):
        return {key: _interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [_interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, argument = match.groups()
        current = env.get(name, "")
        if operator in (":?", "?") and not current:
            raise AssertionError(f"compose needs {name}: {argument}")
        if operator in (":-", "-") and not current:
            return argument
        return current

    return _COMPOSE_REF.sub(substitute, value)


def _dotenv_example() -> dict[str, str]:
    """infra/.env.example's keys, with generated values for the secrets it leaves empty."""
    values = {}
    for line in (INFRA / ".env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip() or secrets.token_hex(8)
    return values


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return _interpolate(_yaml(INFRA / "compose.yaml"), _dotenv_example())


def _image_to_repo(container_path: str) -> Path:
    """The repository file that infra/Dockerfile copies to `container_path` in the image."""
    workdir = "/"
    for line in (INFRA / "Dockerfile").read_text().splitlines():
        parts = line.split()
        if parts[:1] == ["WORKDIR"]:
            workdir = parts[1]
        if parts[:1] != ["COPY"] or parts[1].startswith("--"):
            continue
        *sources, target = parts[1:]
        into_folder = target.endswith("/") or len(sources) > 1
        for source in sources:
            destination = str(PurePosixPath(workdir) / target / (PurePosixPath(source).name if into_folder else ""))
            if container_path == destination:
                return REPO / source
            if container_path.startswith(destination + "/") and (REPO / source).is_dir():
                return REPO / source / container_path[len(destination) + 1:]
    raise AssertionError(f"infra/Dockerfile copies nothing to {container_path}")


def _code_env_vars() -> set[str]:
    """TEXTMILL_* variables the code location and the core read (the CLI's own flags excluded)."""
    names = set()
    for folder in ("textmill", "assets", "checks", "flows"):
        for path in (REPO / folder).rglob("*.py"):
            if path.name != "cli.py":
                names |= set(re.findall(r"TEXTMILL_[A-Z][A-Z0-9_]*", path.read_text(encoding="utf-8")))
    return names


def _recipe_required_vars(path: Path) -> set[str]:
    """${VAR} references without a default in a recipe's values (comments excluded)."""
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            found.update(m.group(1) for m in re.finditer(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", value))

    walk(_yaml(path))
    return found


def _dagster_yaml_env_vars() -> set[str]:
    found: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            if set(value) == {"env"}:
                found.add(value["env"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(_yaml(INFRA / "dagster.yaml"))
    return found


def _command_option(command: list[str], option: str) -> str:
    for part in command:
        if part.startswith(f"{option}="):
            return part.split("=", 1)[1]
    raise AssertionError(f"{option} missing from {command}")


# files ----------------------------------------------------------------------------------------
def test_every_infra_yaml_parses():
    files = sorted(INFRA.rglob("*.yaml")) + sorted(INFRA.rglob("*.yml"))
    names = {str(path.relative_to(INFRA)) for path in files}
    assert {"dagster.yaml", "workspace.yaml", "compose.yaml", "recipes/cluster.yaml",
            "helm/dagster-values.yaml", "k8s/raycluster.yaml"} <= names
    for path in files:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        assert documents and all(isinstance(doc, dict) for doc in documents), path
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"pip install [^\n]*-c constraints\.txt", dockerfile)  # the lock, not a fresh resolve


def test_recipe_values_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TM_ENDPOINT", "http://minio:9000")
    monkeypatch.delenv("TM_UNSET", raising=False)
    data = {"storage": {"root": "s3://${TM_BUCKET:-textmill}/x", "storage_options": {"endpoint_url": "${TM_ENDPOINT}"}},
            "execution": {"workers": "${TM_WORKERS:-3}"}, "raw": {"file_patterns": ["*.warc", "${TM_PATTERN:-*.jsonl}"]}}
    recipe = Recipe.model_validate(expand_env(data))
    assert recipe.storage.root == "s3://textmill/x"
    assert recipe.storage.storage_options == {"endpoint_url": "http://minio:9000"}
    assert recipe.execution.workers == 3 and recipe.raw.file_patterns == ["*.warc", "*.jsonl"]
    path = tmp_path / "r.yaml"
    path.write_text("storage:\n  storage_options: {endpoint_url: '${TM_UNSET}'}\n")
    with pytest.raises(RecipeError, match=r"storage\.storage_options\.endpoint_url.*TM_UNSET is not set"):
        load_recipe(path)


# Dagster instance -----------------------------------------------------------------------------
DAGSTER_PG_ENV = {"DAGSTER_PG_HOST": "127.0.0.1", "DAGSTER_PG_PORT": "5432", "DAGSTER_PG_USERNAME": "dagster",
                  "DAGSTER_PG_PASSWORD": "pw", "DAGSTER_PG_DB": "dagster"}


def test_dagster_yaml_passes_dagsters_instance_schema(monkeypatch, tmp_path):
    from dagster._config import validate_config
    from dagster._core.errors import DagsterInvalidConfigError
    from dagster._core.instance.config import dagster_instance_config
    from dagster._core.storage.config import pg_config
    from dagster._serdes import ConfigurableClassData

    for key, value in DAGSTER_PG_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_DIR", str(tmp_path / "logs"))
    shutil.copy(INFRA / "dagster.yaml", tmp_path / "dagster.yaml")
    config, custom_class = dagster_instance_config(str(tmp_path))
    assert custom_class is None
    assert config["python_logs"]["managed_python_loggers"] == ["textmill"]
    assert config["telemetry"] == {"enabled": False}
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["run_coordinator"]["config"]["max_concurrent_runs"] >= 1
    # the nested sections are validated by their own classes' schemas, as the instance does on load
    assert validate_config(pg_config(), config["storage"]["postgres"]).success
    coordinator = ConfigurableClassData(config["run_coordinator"]["module"], config["run_coordinator"]["class"],
                                        yaml.safe_dump(config["run_coordinator"]["config"])).rehydrate(object)
    assert coordinator.__class__.__name__ == "QueuedRunCoordinator"
    logs = config["compute_logs"]
    manager = ConfigurableClassData(logs["module"], logs["class"], yaml.safe_dump(logs["config"])).rehydrate(object)
    assert manager.__class__.__name__ == "LocalComputeLogManager"
    # the schema is not vacuous: a misspelt key fails it
    broken = (INFRA / "dagster.yaml").read_text().replace("managed_python_loggers", "managed_python_logger")
    (tmp_path / "dagster.yaml").write_text(broken)
    with pytest.raises(DagsterInvalidConfigError):
        dagster_instance_config(str(tmp_path))


@pytest.mark.slow
def test_definitions_validate_as_module_and_through_the_workspace(tmp_path):
    commands = {"module": [DAGSTER, "definitions", "validate", "-m", "assets.definitions"],
                "workspace": [DAGSTER, "definitions", "validate", "-w", str(INFRA / "workspace.yaml")]}

    def env(name: str) -> dict[str, str]:
        # one instance folder each: two processes creating one SQLite schema at once collide
        (tmp_path / name).mkdir()
        values = dict(os.environ, DAGSTER_HOME=str(tmp_path / name))
        values.pop("DAGSTER_IS_DEFS_VALIDATION_CLI", None)
        return values

    # both at once from another directory: the code location must import from the installed package
    running = {name: subprocess.Popen(command, cwd=tmp_path, env=env(name), stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True, start_new_session=True)
               for name, command in commands.items()}
    try:
        for name, process in running.items():
            output, _ = process.communicate(timeout=240)
            assert process.returncode == 0, f"{name}: {output[-3000:]}"
            assert "Validation successful" in output, output[-3000:]
    finally:
        for process in running.values():
            if process.poll() is None:
                os.killpg(process.pid, 9)
    workspace = _yaml(INFRA / "workspace.yaml")
    assert workspace["load_from"] == [{"python_module": {"module_name": "assets.definitions", "location_name": "textmill"}}]


# compose --------------------------------------------------------------------------------------
def test_compose_services_share_image_env_and_addresses(compose, monkeypatch):
    services = compose["services"]
    assert {"minio", "createbuckets", "postgres", *TEXTMILL_SERVICES} <= set(services)
    images = {services[name]["image"] for name in TEXTMILL_SERVICES}
    assert len(images) == 1, images
    built = [name for name in services if "build" in services[name]]
    assert built and all(name in TEXTMILL_SERVICES for name in built)
    for name in built:
        build = services[name]["build"]
        assert (INFRA / build["context"] / build["dockerfile"]).resolve() == (INFRA / "Dockerfile").resolve()
    env = services["dagster-webserver"]["environment"]
    for name in TEXTMILL_SERVICES:
        assert services[name]["environment"] == env, f"{name} has another environment"

    # every variable the code, the cluster recipe and infra/dagster.yaml read is set
    recipe_path = _image_to_repo(env["TEXTMILL_RECIPE"])
    assert recipe_path == INFRA / "recipes" / "cluster.yaml" and recipe_path.exists()
    needed = set(ENV_VARS.values()) | _code_env_vars() | _recipe_required_vars(recipe_path) | _dagster_yaml_env_vars()
    assert not needed - set(env), f"set these in infra/compose.yaml's x-textmill-env: {sorted(needed - set(env))}"
    # secrets only as references to the .env file, never literal
    raw_env = _yaml(INFRA / "compose.yaml")["x-textmill-env"]
    for key, value in raw_env.items():
        if SECRET_NAME.search(key):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]*\}", str(value)), f"{key} must come from infra/.env"
    # the image's paths exist in the repository (Dockerfile COPY)
    for name in ("dagster-webserver", "dagster-daemon"):
        assert _image_to_repo(_command_option_after(services[name]["command"], "-w")) == INFRA / "workspace.yaml"

    # the recipe, loaded with compose's environment, validates and points at compose's services
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("TEXTMILL_RECIPE", str(recipe_path))  # the image's path, in this checkout
    recipe = resource_from_env().recipe()
    assert recipe.execution.backend == "ray"
    head = services["ray-head"]["command"]
    assert recipe.execution.ray_address == f"ray://ray-head:{_command_option(head, '--ray-client-server-port')}"
    assert _command_option(services["ray-worker"]["command"], "--address") == f"ray-head:{_command_option(head, '--port')}"
    assert recipe.storage.storage_options["endpoint_url"] == "http://minio:9000"
    assert "9000:9000" in services["minio"]["ports"]
    bucket = recipe.storage.root.removeprefix("s3://").split("/")[0]
    assert f"mc mb --ignore-existing local/{bucket}" in services["createbuckets"]["command"][0]
    assert env["AWS_ACCESS_KEY_ID"] == services["minio"]["environment"]["MINIO_ROOT_USER"]
    assert env["AWS_SECRET_ACCESS_KEY"] == services["minio"]["environment"]["MINIO_ROOT_PASSWORD"]
    # Dagster's PostgreSQL settings are the postgres service's
    postgres = services["postgres"]["environment"]
    assert env["DAGSTER_PG_HOST"] == "postgres"
    assert (env["DAGSTER_PG_USERNAME"], env["DAGSTER_PG_PASSWORD"], env["DAGSTER_PG_DB"]) == (
        postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], postgres["POSTGRES_DB"])
    assert _image_to_repo(env["DAGSTER_HOME"] + "/dagster.yaml") == INFRA / "dagster.yaml"
    for name in ("dagster-webserver", "dagster-daemon"):
        assert services[name]["depends_on"]["postgres"] == {"condition": "service_healthy"}


def _command_option_after(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_cluster_recipe_writes_the_raw_version_to_s3_with_compose_settings(compose, moto_s3, monkeypatch, tmp_path):
    """The compose environment with MinIO swapped for moto: same recipe, bucket and env-borne credentials."""
    import boto3
    from dagster import DagsterInstance, materialize

    from assets.raw import raw
    from textmill.storage import Store

    env = dict(compose["services"]["dagster-daemon"]["environment"])
    env["TEXTMILL_RECIPE"] = str(_image_to_repo(env["TEXTMILL_RECIPE"]))
    env["TEXTMILL_S3_ENDPOINT"] = moto_s3["endpoint_url"]
    env |= {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}  # moto's; compose's come from .env
    env["TEXTMILL_EXECUTION_BACKEND"] = "serial"  # the Ray path is tests/test_dagster_ray.py's
    env["TEXTMILL_REPORTS_DIR"] = str(tmp_path / "reports")
    for key, value in env.items():
        if not key.startswith("DAGSTER_"):
            monkeypatch.setenv(key, value)
    resource = resource_from_env()
    recipe = resource.recipe()
    bucket, _, prefix = recipe.storage.root.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3", endpoint_url=moto_s3["endpoint_url"], region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    crawl = f"CC-{uuid.uuid4().hex[:8]}"
    assert recipe.storage.storage_options["endpoint_url"] == moto_s3["endpoint_url"]  # from the environment
    store = resource.store()
    for name in ("cc-main-2020-34-sample.warc.gz", "warcio-example.warc.gz"):
        store.write_bytes(store.path("landing", crawl, "warc", name), (SAMPLE / "warc" / name).read_bytes())

    instance = DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("crawls", [crawl])
    result = materialize([raw], partition_key=crawl, instance=instance, resources={"textmill": resource})
    assert result.success
    metadata = result.asset_materializations_for_node("raw")[0].metadata
    version = metadata["version"].value
    keys = {item["Key"] for item in s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/datasets/raw/{crawl}/")["Contents"]}
    assert f"{prefix}/datasets/raw/{crawl}/{version}/_manifest.json" in keys
    assert any(key.endswith(".parquet") for key in keys)
    manifest = Store(recipe.storage.root, storage_options=recipe.storage.storage_options).manifest("raw", crawl, version)
    assert manifest is not None and manifest.rows == metadata["dagster/row_count"].value >= 16


# Helm and KubeRay -----------------------------------------------------------------------------
def test_helm_values_and_raycluster_share_the_image_and_settings():
    values = _yaml(INFRA / "helm" / "dagster-values.yaml")
    cluster = _yaml(INFRA / "k8s" / "raycluster.yaml")
    instance = _yaml(INFRA / "dagster.yaml")

    user = values["dagster-user-deployments"]
    assert user["enabled"] is True
    (deployment,) = user["deployments"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "assets.definitions"]
    assert deployment["includeConfigInLaunchedRuns"] == {"enabled": True}
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"

    assert cluster["apiVersion"] == "ray.io/v1" and cluster["kind"] == "RayCluster"
    import ray

    assert cluster["spec"]["rayVersion"] == ray.__version__  # the image's ray must match the drivers'
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [group["template"]["spec"]["containers"][0] for group in cluster["spec"]["workerGroupSpecs"]]
    assert {head["image"], *(worker["image"] for worker in workers)} == {image}

    env = {item["name"]: item.get("value") for item in deployment["env"]}
    needed = set(ENV_VARS.values()) | _code_env_vars() | _recipe_required_vars(INFRA / "recipes" / "cluster.yaml")
    assert not needed - set(env), f"set these in the user deployment's env: {sorted(needed - set(env))}"
    assert _image_to_repo(env["TEXTMILL_RECIPE"]).exists()
    client_port = next(port["containerPort"] for port in head["ports"] if port["name"] == "client")
    assert env["TEXTMILL_RAY_ADDRESS"] == f"ray://{cluster['metadata']['name']}-head-svc:{client_port}"
    assert env["TEXTMILL_EXECUTION_BACKEND"] == "ray"
    # secrets: only Secret references, the same ones for Dagster's runs and the Ray pods
    assert not any(SECRET_NAME.search(name) for name in env), "secret values belong in Kubernetes Secrets"
    secrets_used = {item["name"] for item in deployment["envSecrets"]}
    for container in (head, *workers):
        assert {ref["secretRef"]["name"] for ref in container["envFrom"]} == secrets_used
        assert {item["name"]: item["value"] for item in container["env"]}["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_MODE"] == "token"
    postgres = values["postgresql"]
    assert postgres["enabled"] is False and postgres["postgresqlPassword"] == ""
    assert values["global"]["postgresqlSecretName"] and values["generatePostgresqlPasswordSecret"] is False

    # the same instance settings as infra/dagster.yaml
    queued = values["dagsterDaemon"]["runCoordinator"]
    assert queued["enabled"] is True and queued["type"] == "QueuedRunCoordinator"
    limits = queued["config"]["queuedRunCoordinator"]
    assert limits["maxConcurrentRuns"] == instance["run_coordinator"]["config"]["max_concurrent_runs"]
    assert limits["tagConcurrencyLimits"] == instance["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert values["pythonLogs"]["managedPythonLoggers"] == instance["python_logs"]["managed_python_loggers"]
    assert values["telemetry"] == {"enabled": False} == instance["telemetry"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


# PostgreSQL -----------------------------------------------------------------------------------
def _postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        pytest.fail("PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb): .ci/run installs Debian's "
                    "`postgresql` package when it is missing; locally run `apt-get install postgresql`")
    return Path(found[-1]).parent


@pytest.fixture
def postgres() -> Iterator[dict[str, str]]:
    """A PostgreSQL server on 127.0.0.1 (free port, temp dir, password auth) with database `dagster`."""
    import psycopg2

    bindir = _postgres_bin()
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # postgres refuses to run as root
        name = "postgres" if _user_exists("postgres") else "nobody"
        owner = pwd.getpwnam(name)
        as_user = ["runuser", "-u", name, "--"]
    base = Path(tempfile.mkdtemp(prefix="tm-pg-"))
    password = secrets.token_hex(12)
    (base / "pw").write_text(password)
    if owner is not None:
        for path in (base, base / "pw"):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    data, port = base / "data", free_port()
    run = lambda *args: subprocess.run([*as_user, *map(str, args)], check=True, capture_output=True, text=True,
                                       timeout=120)
    started = False
    try:
        run(bindir / "initdb", "-D", data, "-U", "textmill", "--auth=scram-sha-256", f"--pwfile={base / 'pw'}",
            "-E", "UTF8", "--no-sync")
        run(bindir / "pg_ctl", "-D", data, "-l", base / "server.log", "-w", "-t", "90", "-o",
            f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
        started = True
        connection = psycopg2.connect(host="127.0.0.1", port=port, user="textmill", password=password, dbname="postgres")
        connection.autocommit = True
        connection.cursor().execute("CREATE DATABASE dagster")
        connection.close()
        yield {"host": "127.0.0.1", "port": str(port), "user": "textmill", "password": password, "db": "dagster"}
    finally:
        if started:
            subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                           capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.slow
def test_dagster_instance_on_postgres_records_runs_and_materializations(postgres, tmp_path, monkeypatch):
    import psycopg2
    from dagster import AssetKey, DagsterInstance, DagsterRunStatus, materialize

    from assets.raw import raw
    from textmill.storage import Store

    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INFRA / "dagster.yaml", home / "dagster.yaml")
    env = {"DAGSTER_HOME": str(home), "DAGSTER_PG_HOST": postgres["host"], "DAGSTER_PG_PORT": postgres["port"],
           "DAGSTER_PG_USERNAME": postgres["user"], "DAGSTER_PG_PASSWORD": postgres["password"],
           "DAGSTER_PG_DB": postgres["db"], "DAGSTER_COMPUTE_LOG_DIR": str(tmp_path / "compute-logs"),
           "TEXTMILL_RECIPE": str(REPO / "recipes" / "default.yaml"), "TEXTMILL_ROOT": str(tmp_path / "root"),
           "TEXTMILL_EXECUTION_BACKEND": "serial", "TEXTMILL_RAY_ADDRESS": "", "TEXTMILL_WORKERS": ""}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    crawl = "CC-PG"
    landing = tmp_path / "root" / "landing" / crawl / "warc"
    landing.mkdir(parents=True)
    shutil.copy(SAMPLE / "warc" / "cc-main-2020-34-sample.warc.gz", landing)

    # the instance from DAGSTER_HOME, as the webserver and daemon load it; the resource from the env
    with DagsterInstance.get() as instance:  # creates Dagster's schema in PostgreSQL
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        instance.add_dynamic_partitions("crawls", [crawl])
        result = materialize([raw], partition_key=crawl, instance=instance, resources={"textmill": resource_from_env()})
        assert result.success
    version = Store(str(tmp_path / "root")).latest("raw", crawl).version

    # in PostgreSQL's own tables
    connection = psycopg2.connect(host=postgres["host"], port=int(postgres["port"]), user=postgres["user"],
                                  password=postgres["password"], dbname=postgres["db"])
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT run_id, status FROM runs")
        runs = cursor.fetchall()
        assert [status for _, status in runs] == ["SUCCESS"]
        run_id = runs[0][0]
        cursor.execute("SELECT partition, event FROM event_logs WHERE run_id = %s AND dagster_event_type = "
                       "'ASSET_MATERIALIZATION' AND asset_key = %s", (run_id, AssetKey("raw").to_string()))
        materializations = cursor.fetchall()
        assert len(materializations) == 1 and materializations[0][0] == crawl and version in materializations[0][1]
        cursor.execute("SELECT count(*) FROM asset_check_executions WHERE run_id = %s AND execution_status = 'SUCCEEDED'",
                       (run_id,))
        assert cursor.fetchone()[0] >= 6  # raw's blocking checks
        # python_logs: the textmill logger's records are in the run's event log
        cursor.execute("SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type IS NULL "
                       "AND event LIKE %s", (run_id, f"%raw {crawl}: 1/1 files ingested%"))
        assert cursor.fetchone()[0] >= 1
        cursor.execute("SELECT partition FROM dynamic_partitions WHERE partitions_def_name = 'crawls'")
        assert cursor.fetchall() == [(crawl,)]
    finally:
        connection.close()

    # and read back through Dagster
    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs()
        assert run.status == DagsterRunStatus.SUCCESS and run.run_id == run_id
        event = instance.get_latest_materialization_event(AssetKey("raw"))
        assert event.run_id == run_id
        assert event.asset_materialization.partition == crawl
        assert event.asset_materialization.metadata["version"].value == version


def test_missing_postgresql_fails_with_the_install_hint(monkeypatch):
    monkeypatch.setattr(glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.fail.Exception, match=r"\.ci/run installs Debian's `postgresql`"):
        _postgres_bin()
