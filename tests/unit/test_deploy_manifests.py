"""The deployment files name only what exists: deploy/docker/* and deploy/k8s/*.

No Docker engine or cluster here, so the files are parsed and checked against the code:
every `tollway <command>` parses with deploy/cli.py's parser, every process `tollway up`
starts is deployed, every environment variable set is one the code reads (the list is
built from the settings classes at test time, deploy/config_reference.py), ports match
the settings defaults, the topics Job creates exactly the topics of schemas/topics.py,
and replica counts stay within the partitions that bound them.
"""

from __future__ import annotations

import ast
import itertools
import re
import shlex
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import pytest
import yaml

from analytics.settings import AnalyticsSettings
from deploy import config_reference, topics_manifest
from deploy.cli import main as cli_main
from deploy.cli import parser
from deploy.stack import METRICS_PORT_ENV, Stack
from ingress.settings import IngressSettings
from schemas import topics
from schemas.batch_topics import BATCH_STATE
from schemas.routes import RoutesConfig, default_routes
from schemas.topics import Topic
from workers.budget.config import load_budgets

ROOT: Final = Path(__file__).resolve().parents[2]
DOCKER: Final = ROOT / "deploy" / "docker"
K8S: Final = ROOT / "deploy" / "k8s"
TOLLWAY_IMAGE: Final = re.compile(r"^tollway(:[\w.-]+)?$")
WORKLOADS: Final = ("Deployment", "StatefulSet", "Job")

#: The topic whose partitions bound each consumer's useful replicas (deploy/k8s/README.md).
BOUND_BY: Final[dict[str, Topic]] = {
    "ingress": topics.REPLIES,  # each replica reads one partition of its own
    "router": topics.REQUESTS_INTERACTIVE,
    "cost-processor": topics.ATTEMPTS,
    "budget-processor": topics.USAGE,
    "loader": topics.RESULTS,
    "batches-worker": BATCH_STATE,
    "callbacks": topics.RESULTS,
}
#: Served by another program in the deployments: ClickHouse itself replaces the
#: embedded server; a cluster calls real providers, not the mock.
REPLACED_IN_COMPOSE: Final = {"analytics serve"}
REPLACED_IN_K8S: Final = {"analytics serve", "mock-provider"}


@dataclass
class Container:
    """A container running the Tollway image, wherever it is declared."""

    where: str
    args: list[str]
    env: dict[str, Any]
    """name -> value (str) or valueFrom (dict)."""
    explicit: set[str] = field(default_factory=set)
    spec: dict[str, Any] = field(default_factory=dict)
    workload: dict[str, Any] = field(default_factory=dict)

    @property
    def command(self) -> str:
        """The subcommand path: the leading words before the first option."""
        words: list[str] = []
        for arg in self.args:
            if arg.startswith("-"):
                break
            words.append(arg)
        return " ".join(words)


# --- loading ------------------------------------------------------------------------


@cache
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DOCKER / "compose.yaml").read_text("utf-8"))
    return loaded


@cache
def k8s_documents() -> tuple[tuple[str, dict[str, Any]], ...]:
    return tuple(
        (path.name, doc)
        for path in sorted(K8S.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text("utf-8"))
        if doc
    )


def k8s_kind(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in k8s_documents() if doc.get("kind") == kind]


def config_map(name: str) -> dict[str, str]:
    for _, doc in k8s_kind("ConfigMap"):
        if doc["metadata"]["name"] == name:
            data: dict[str, str] = doc["data"]
            return data
    raise AssertionError(f"no ConfigMap {name!r} in deploy/k8s")


def compose_containers() -> list[Container]:
    found = []
    for name, service in compose()["services"].items():
        if TOLLWAY_IMAGE.match(str(service.get("image", ""))):
            env = dict(service.get("environment") or {})
            found.append(
                Container(f"compose {name}", list(service["command"]), env, set(env), service)
            )
    return found


def k8s_containers() -> list[Container]:
    found = []
    for file, doc in k8s_documents():
        if doc.get("kind") not in WORKLOADS:
            continue
        pod = doc["spec"]["template"]["spec"]
        for spec in pod["containers"]:
            if not TOLLWAY_IMAGE.match(spec["image"]):
                continue
            assert "command" not in spec, f"{file}: keep the image's `tollway` entrypoint"
            env = {e["name"]: e.get("value", e.get("valueFrom")) for e in spec.get("env", [])}
            where = f"{file} {doc['metadata']['name']}/{spec['name']}"
            found.append(Container(where, list(spec["args"]), env, set(env), spec, doc))
    return found


def all_containers() -> Iterator[Container]:
    yield from compose_containers()
    yield from k8s_containers()


def container(containers: list[Container], command: str) -> Container:
    matches = [c for c in containers if c.command == command]
    assert len(matches) == 1, f"expected one `tollway {command}`, found {len(matches)}"
    return matches[0]


def parse(args: list[str], where: str) -> None:
    try:
        parser().parse_args(args)
    except SystemExit as exc:
        pytest.fail(f"{where}: `tollway {shlex.join(args)}` is not a valid command ({exc})")


def up_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> set[str]:
    """The commands `tollway up` starts (deploy/stack.py), with the embedded ClickHouse."""
    monkeypatch.setenv("TOLLWAY_CALLBACKS_WEBHOOKS_FILE", str(tmp_path / "webhooks.yaml"))
    monkeypatch.delenv("CLICKHOUSE_URL", raising=False)
    monkeypatch.setenv("TOLLWAY_AUTH", "open")  # keys mode would write key files
    stack = Stack(use_mock=True, log_dir=tmp_path, webhooks_file=tmp_path / "webhooks.yaml")
    return {Container("up", c.args, {}).command for c in stack.plan("127.0.0.1:1")}


def provider_key_vars() -> set[str]:
    """Variables named by `api_key_env`: the k8s routes file and the built-in catalogue."""
    routes = RoutesConfig.model_validate(
        yaml.safe_load(config_map("tollway-config")["routes.yaml"])
    )
    catalogues = (routes, default_routes({"OPENAI_API_KEY": "set"}))
    return {
        d.api_key_env
        for catalogue in catalogues
        for route in catalogue.models.values()
        for d in route.deployments
        if d.api_key_env
    }


def port_of(url: str) -> int:
    port = urlsplit(url if "//" in url else f"//{url}").port
    assert port is not None, f"{url} names no port"
    return port


# --- commands -----------------------------------------------------------------------


def test_every_tollway_command_parses() -> None:
    containers = list(all_containers())
    assert len(containers) >= 10
    for c in containers:
        parse(c.args, c.where)


def test_compose_runs_every_process_of_tollway_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wanted = up_processes(monkeypatch, tmp_path) - REPLACED_IN_COMPOSE
    assert {"router", "ingress", "loader"} <= wanted  # the plan was really read
    assert wanted <= {c.command for c in compose_containers()}
    images = {str(s.get("image", "")).split(":")[0] for s in compose()["services"].values()}
    assert {"apache/kafka", "clickhouse/clickhouse-server"} <= images


def test_k8s_runs_every_process_of_tollway_up(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    wanted = up_processes(monkeypatch, tmp_path) - REPLACED_IN_K8S
    running = {c.command for c in k8s_containers() if c.workload["kind"] != "Job"}
    assert wanted <= running, f"not deployed: {sorted(wanted - running)}"


def test_compose_kafka_is_a_single_kraft_node_without_auto_creation() -> None:
    env = compose()["services"]["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    advertised = env["KAFKA_ADVERTISED_LISTENERS"].removeprefix("PLAINTEXT://")
    for c in compose_containers():
        if "TOLLWAY_KAFKA_BOOTSTRAP" in c.env:
            assert c.env["TOLLWAY_KAFKA_BOOTSTRAP"] == advertised, c.where


def test_jobs_create_topics_and_migrate_before_the_processes() -> None:
    services = compose()["services"]
    assert container(compose_containers(), "topics").args == ["topics"]
    assert container(compose_containers(), "analytics migrate")
    for name in ("router", "ingress", "loader", "cost-processor", "budget-processor"):
        assert services[name]["depends_on"]["topics"]["condition"] == (
            "service_completed_successfully"
        )
    jobs = {c.command for c in k8s_containers() if c.workload["kind"] == "Job"}
    assert "analytics migrate" in jobs


# --- environment --------------------------------------------------------------------


def test_every_variable_set_is_one_the_code_reads() -> None:
    known = config_reference.known_env_vars() | provider_key_vars()
    for c in all_containers():
        unknown = sorted(set(c.env) - known)
        assert not unknown, f"{c.where} sets variables no code reads: {unknown}"


def test_settings_variables_go_to_processes_that_read_them() -> None:
    readers: dict[str, set[str]] = {}
    for group in config_reference.settings_groups():
        for variable in group.variables:
            for name in (variable.name, *variable.also):
                readers.setdefault(name, set()).update(
                    config_reference.READ_BY.get(group.class_name, ("*",))
                )
    for c in all_containers():
        for name in c.explicit:
            allowed = readers.get(name, {"*"})
            assert "*" in allowed or c.command in allowed, (
                f"{c.where} sets {name}, which only {sorted(allowed)} read"
            )


def test_compose_interpolations_are_in_the_env_example() -> None:
    text = (DOCKER / "compose.yaml").read_text("utf-8")
    used = set(re.findall(r"\$\{([A-Z0-9_]+)", text))
    example = {
        line.split("=", 1)[0]
        for line in (DOCKER / "env.example").read_text("utf-8").splitlines()
        if "=" in line and not line.startswith("#")
    }
    assert used == example


def test_secrets_come_from_secret_objects_documented_in_the_readme() -> None:
    readme = (K8S / "README.md").read_text("utf-8")
    secret_env = {"TOLLWAY_INGRESS_ID_SECRET", "TOLLWAY_KEY_PEPPER", "TOLLWAY_ADMIN_KEY"}
    secret_env |= {"CLICKHOUSE_URL"} | provider_key_vars()
    seen = set()
    for c in k8s_containers():
        for name, value in c.env.items():
            if name in secret_env:
                assert isinstance(value, dict), f"{c.where}: {name} is a literal, not a Secret"
                assert "secretKeyRef" in value, f"{c.where}: {name} must come from a Secret"
            if isinstance(value, dict) and "secretKeyRef" in value:
                ref = value["secretKeyRef"]
                assert ref["name"] == "tollway-secrets", c.where
                assert f"--from-literal={ref['key']}=" in readme, f"README: secret key {ref['key']}"
                seen.add(name)
        for volume in c.workload["spec"]["template"]["spec"].get("volumes", []):
            if "secret" in volume:
                assert volume["secret"]["secretName"] in readme
    assert {"TOLLWAY_ADMIN_KEY", "TOLLWAY_KEY_PEPPER", "TOLLWAY_INGRESS_ID_SECRET"} <= seen
    assert "OPENAI_API_KEY" in seen


def test_files_named_by_variables_are_mounted_from_config_maps() -> None:
    for c in k8s_containers():
        pod = c.workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounts = {m["mountPath"]: m["name"] for m in c.spec.get("volumeMounts", [])}
        for name, value in c.env.items():
            if not (name.endswith("_FILE") and isinstance(value, str)):
                continue
            path = Path(value)
            assert str(path.parent) in mounts, f"{c.where}: {name}={value} is not mounted"
            volume = volumes[mounts[str(path.parent)]]
            if "configMap" in volume:
                assert path.name in config_map(volume["configMap"]["name"]), (c.where, name)


def test_mounted_routes_and_budgets_are_valid(tmp_path: Path) -> None:
    data = config_map("tollway-config")
    routes = RoutesConfig.model_validate(yaml.safe_load(data["routes.yaml"]))
    assert routes.models
    budgets_file = tmp_path / "budgets.yaml"
    budgets_file.write_text(data["budgets.yaml"], "utf-8")
    assert load_budgets(budgets_file).budgets == ()


# --- ports and probes ---------------------------------------------------------------


def effective_port(c: Container) -> int:
    value = c.env.get("TOLLWAY_INGRESS_PORT")
    default: int = IngressSettings.model_fields["port"].default
    return int(value) if isinstance(value, str) else default


def test_k8s_ingress_ports_and_probes_match_the_settings() -> None:
    ingress = container(k8s_containers(), "ingress")
    port = effective_port(ingress)
    assert port == IngressSettings.model_fields["port"].default
    assert [p["containerPort"] for p in ingress.spec["ports"] if p["name"] == "http"] == [port]
    assert ingress.spec["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port}
    assert ingress.spec["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port}
    services = [d for _, d in k8s_kind("Service") if d["spec"].get("clusterIP") != "None"]
    assert [p["targetPort"] for s in services for p in s["spec"]["ports"]] == [port]


def test_every_k8s_process_serving_metrics_declares_and_annotates_its_port() -> None:
    for c in k8s_containers():
        variable = METRICS_PORT_ENV.get(c.args[0])
        if variable is None:
            continue
        port = int(c.env[variable])
        assert [p["containerPort"] for p in c.spec["ports"] if p["name"] == "metrics"] == [port]
        assert c.env["TOLLWAY_METRICS_HOST"] == "0.0.0.0", c.where  # reachable by the scraper
        annotations = c.workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/port"] == str(port), c.where
        assert annotations["prometheus.io/scrape"] == "true", c.where
    served = {c.args[0] for c in k8s_containers()}
    assert set(METRICS_PORT_ENV) <= served


def test_probed_paths_are_served_and_only_http_processes_are_probed() -> None:
    app = (ROOT / "ingress" / "app.py").read_text("utf-8")
    for c in k8s_containers():
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            if probe in c.spec:
                assert c.command == "ingress", f"{c.where}: serves no HTTP to probe"
                assert f'Route("{c.spec[probe]["httpGet"]["path"]}"' in app


def test_compose_ports_match_the_settings_defaults() -> None:
    services = compose()["services"]
    ingress = container(compose_containers(), "ingress")
    port = effective_port(ingress)
    assert services["ingress"]["ports"] == [f"{port}:{port}"]
    assert f":{port}/readyz" in " ".join(services["ingress"]["healthcheck"]["test"])
    mock = container(compose_containers(), "mock-provider")
    mock_port = int(mock.args[mock.args.index("--port") + 1])
    for c in compose_containers():
        if "TOLLWAY_MOCK_URL" in c.env:
            assert port_of(c.env["TOLLWAY_MOCK_URL"]) == mock_port, c.where
    clickhouse_port = port_of(
        AnalyticsSettings.model_fields["clickhouse_url"].default.get_secret_value()
    )
    assert f":{clickhouse_port}/ping" in " ".join(services["clickhouse"]["healthcheck"]["test"])
    for c in compose_containers():
        if "CLICKHOUSE_URL" in c.env:
            assert port_of(c.env["CLICKHOUSE_URL"]) == clickhouse_port, c.where


# --- scale --------------------------------------------------------------------------


def replicas(c: Container) -> int:
    if c.workload:
        count: int = c.workload["spec"].get("replicas", 1)
        return count
    deploy: dict[str, int] = c.spec.get("deploy", {})
    return deploy.get("replicas", 1)


def test_replicas_stay_within_the_partitions_that_bound_them() -> None:
    for c in all_containers():
        topic = BOUND_BY.get(c.command)
        if topic is not None:
            assert replicas(c) <= topic.partitions, (
                f"{c.where}: {replicas(c)} replicas, but {topic.name} has {topic.partitions} "
                "partitions (deploy/k8s/README.md)"
            )


def test_ingress_replicas_setting_matches_the_deployment() -> None:
    ingress = container(k8s_containers(), "ingress")
    if "TOLLWAY_INGRESS_REPLICAS" in config_reference.known_env_vars():
        assert ingress.env["TOLLWAY_INGRESS_REPLICAS"] == str(replicas(ingress))


def test_static_membership_ids_are_stable_pod_names() -> None:
    for c in k8s_containers():
        for name, value in c.env.items():
            if name.endswith("_GROUP_INSTANCE_ID"):
                assert c.workload["kind"] == "StatefulSet", c.where
                assert value == {"fieldRef": {"fieldPath": "metadata.name"}}, c.where


def test_every_container_has_resources_and_runs_as_non_root() -> None:
    for c in k8s_containers():
        resources = c.spec["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), c.where
        assert "memory" in resources["limits"], c.where
        pod = c.workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, c.where
        assert pod["securityContext"]["runAsUser"] != 0, c.where


def test_kustomization_lists_every_manifest() -> None:
    (_, kustomization), *_ = k8s_kind("Kustomization")
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files


# --- topics -------------------------------------------------------------------------


def job_topics() -> dict[str, tuple[int, dict[str, str]]]:
    text = config_map(topics_manifest.CONFIGMAP_NAME)[topics_manifest.DATA_KEY]
    found = {}
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            name, partitions, *configs = line.split()
            found[name] = (int(partitions), dict(kv.split("=", 1) for kv in configs))
    return found


def test_the_topics_job_creates_exactly_the_topics_of_the_code() -> None:
    expected = {t.name: (t.partitions, dict(t.config)) for t in topics_manifest.wanted_topics()}
    assert job_topics() == expected


def test_the_topics_job_and_tollway_topics_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[Topic, ...]] = []

    async def capture(_: str, wanted: tuple[Topic, ...]) -> list[str]:
        asked.append(wanted)
        return []

    monkeypatch.setattr("deploy.topics.ensure_topics", capture)
    assert cli_main(["topics"]) == 0
    assert [t.name for t in asked[0]] == [t.name for t in topics_manifest.wanted_topics()]


def test_the_topics_configmap_is_generated_and_current() -> None:
    current = (K8S / "topics-configmap.yaml").read_text("utf-8")
    assert current == topics_manifest.render(), (
        "deploy/k8s/topics-configmap.yaml is out of date: run `make docs`"
    )


def test_the_topics_job_reads_the_generated_list() -> None:
    (_, job), *_ = [(f, d) for f, d in k8s_kind("Job") if d["metadata"]["name"] == "tollway-topics"]
    pod = job["spec"]["template"]["spec"]
    (spec,) = pod["containers"]
    assert spec["image"].startswith("apache/kafka:")
    mount = next(m for m in spec["volumeMounts"] if m["name"] == "topics")
    script = spec["args"][0]
    assert f"{mount['mountPath']}/{topics_manifest.DATA_KEY}" in script
    assert "--if-not-exists" in script
    assert "PartitionCount" in script  # a partition count that differs fails the Job
    volume = next(v for v in pod["volumes"] if v["name"] == "topics")
    assert volume["configMap"]["name"] == topics_manifest.CONFIGMAP_NAME


# --- the image ----------------------------------------------------------------------


@cache
def dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with continuation lines joined, comments dropped."""
    text = (DOCKER / "Dockerfile").read_text("utf-8")
    joined = re.sub(r"\\\n", " ", text)
    found = []
    for line in joined.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            instruction, _, rest = line.strip().partition(" ")
            found.append((instruction.upper(), rest.strip()))
    return found


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (instruction, _) in enumerate(steps) if instruction == "FROM")
    return steps[last_from:]


def test_the_image_is_python_311_slim_and_runs_as_non_root() -> None:
    args = dict(a.split("=", 1) for i, a in dockerfile() if i == "ARG" and "=" in a)
    bases = [a.split()[0] for i, a in dockerfile() if i == "FROM"]
    assert {args.get(b.strip("${}"), b) for b in bases} == {"python:3.11-slim"}
    users = [a for i, a in final_stage() if i == "USER"]
    assert users, "the image must name its user"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_the_entrypoint_is_the_tollway_script_and_its_default_command_parses() -> None:
    steps = dict(final_stage())
    assert steps["ENTRYPOINT"] == '["tollway"]'
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert pyproject["project"]["scripts"]["tollway"] == "deploy.cli:main"
    command = yaml.safe_load(steps["CMD"])
    with pytest.raises(SystemExit) as stopped:
        parser().parse_args(command)  # --help: prints and exits 0
    assert stopped.value.code == 0


def test_the_image_installs_the_project_from_pyproject() -> None:
    copied = {
        source.rstrip("/")
        for instruction, args in dockerfile()
        if instruction == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    }
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: no such file"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages | {"pyproject.toml", "README.md"} <= copied
    (install,) = [a for i, a in dockerfile() if i == "RUN" and "pip install" in a]
    words = next(c for c in install.split("&&") if "pip install" in c).split()
    assert words[-1] == ".", "installs the project itself"
    for flag, value in itertools.pairwise(words):
        if flag in {"-c", "--constraint", "-r"}:
            assert (ROOT / value).exists(), f"{flag} {value}: no such file in the build context"


def test_the_image_sets_only_variables_the_code_reads() -> None:
    known = config_reference.known_env_vars()
    env = [a for i, a in final_stage() if i == "ENV"]
    names = set(re.findall(r"([A-Z][A-Z0-9_]*)=", " ".join(env)))
    ours = {n for n in names if n.startswith(("TOLLWAY_", "CLICKHOUSE_"))}
    assert ours, "the image sets its state directories"
    assert ours <= known, sorted(ours - known)
    port = IngressSettings.model_fields["port"].default
    assert ("EXPOSE", str(port)) in final_stage()


#: Deployment files that live beside the code but are not read by it at run time.
NOT_PACKAGE_DATA: Final = (
    "deploy/docker",
    "deploy/k8s",
    "deploy/constraints.txt",
    "deploy/osv-advisories.json",  # the dependency audit's advisories, read beside the lock (0024)
)


def test_package_data_ships_every_non_python_file() -> None:
    """A non-editable install (the image) has only what pyproject.toml declares."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    declared = pyproject["tool"]["setuptools"]["package-data"]
    missing = []
    for package in config_reference.PACKAGES:
        base = ROOT / package
        shipped = {p for glob in declared.get(package, []) for p in base.glob(glob)}
        for path in base.rglob("*"):
            rel = path.relative_to(ROOT).as_posix()
            if path.is_dir() or path.suffix in {".py", ".pyc"} or "__pycache__" in path.parts:
                continue
            if not rel.startswith(NOT_PACKAGE_DATA) and path not in shipped:
                missing.append(rel)
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match is not None, requirement
    return canonical(match.group(1))


def runtime_closure() -> set[str]:
    """Distributions `pip install .` brings: pyproject's dependencies and theirs, without
    optional extras (markers are not evaluated: a superset is fine for this check)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    todo = [_requirement_name(r) for r in pyproject["project"]["dependencies"]]
    seen: set[str] = set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo.extend(_requirement_name(r) for r in requires if "extra ==" not in r)
    return seen


def third_party_imports() -> dict[str, str]:
    """Top-level modules imported by the packages (not only for type checking) -> a file."""
    found: dict[str, str] = {}
    for package in config_reference.PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text("utf-8"))
            typing_only = {
                id(node)
                for block in ast.walk(tree)
                if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                for stmt in block.body
                for node in ast.walk(stmt)
            }
            for node in ast.walk(tree):
                if id(node) in typing_only:
                    continue
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in config_reference.PACKAGES:
                        found.setdefault(top, path.relative_to(ROOT).as_posix())
    return found


NO_DEPS_INSTALL: Final = re.compile(r"pip install (?:-q )?--no-deps ([A-Za-z0-9._-]+)==(\S+)")


def test_the_image_installs_what_make_setup_installs_beside_pyproject() -> None:
    """`make setup` installs some distributions with --no-deps; the image must too."""
    makefile = set(NO_DEPS_INSTALL.findall((ROOT / "Makefile").read_text("utf-8")))
    image = set(NO_DEPS_INSTALL.findall((DOCKER / "Dockerfile").read_text("utf-8")))
    assert makefile <= image, f"Dockerfile misses {sorted(makefile - image)}"


def test_the_image_installs_every_module_the_code_imports() -> None:
    """The image is `pip install .` (plus its --no-deps installs): a module the code imports
    that neither brings is missing there, whatever this venv holds."""
    extra = {canonical(n) for n, _ in NO_DEPS_INSTALL.findall((DOCKER / "Dockerfile").read_text())}
    installed = runtime_closure() | extra | {"pip"}  # pip is in every virtual environment
    distributions = metadata.packages_distributions()
    missing = {
        module: where
        for module, where in third_party_imports().items()
        if not any(canonical(d) in installed for d in distributions.get(module, [module]))
    }
    assert not missing, f"imported but not in pyproject.toml's dependencies: {missing}"
