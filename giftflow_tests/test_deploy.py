"""deploy/: no unauthenticated UI on every interface, no default database password."""

import re

import yaml

from giftflow_tests.conftest import ROOT

COMPOSE = ROOT / "deploy/docker-compose.yaml"
HELM = ROOT / "deploy/helm/values.yaml"


def test_compose_publishes_the_ui_on_loopback_and_needs_a_database_password():
    text = COMPOSE.read_text()
    services = yaml.safe_load(text)["services"]
    assert services["webserver"]["ports"] == ["127.0.0.1:3000:3000"]
    for name, service in services.items():
        for port in service.get("ports", []):
            # Only the signed webhook receiver listens beyond loopback.
            assert name == "webhooks" or str(port).startswith("127.0.0.1:"), (name, port)
    uses = re.findall(r"\$\{POSTGRES_PASSWORD[^}]*\}", text)
    assert uses and set(uses) == {"${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"}
    assert "reverse proxy" in text


def test_helm_values_keep_secrets_in_secrets_and_the_ui_internal():
    values = yaml.safe_load(HELM.read_text())
    assert values["global"]["postgresqlSecretName"] == "dagster-postgresql-secret"
    assert values["generatePostgresqlPasswordSecret"] is False and "postgresqlPassword" not in values["postgresql"]
    assert values["dagsterWebserver"]["service"]["type"] == "ClusterIP" and values["ingress"]["enabled"] is False


# The keys Dagster's Helm chart (dagster-io/dagster, helm/dagster; its values schema is generated from the pydantic
# models in helm/dagster/schema/schema/charts/) accepts at the paths giftflow's values use. The models forbid
# unknown keys under the run coordinator, the run launcher and the daemon, so a misspelt key fails `helm install`.
CHART_KEYS = {
    "": {
        "dagsterWebserver",
        "ingress",
        "global",
        "dagster-user-deployments",
        "runLauncher",
        "postgresql",
        "generatePostgresqlPasswordSecret",
        "dagsterDaemon",
        "computeLogManager",
        "pythonLogs",
        "retention",
    },
    "dagsterWebserver": {"replicaCount", "image", "service", "env", "envConfigMaps", "envSecrets", "resources"},
    "dagsterWebserver.service": {"type", "port", "annotations"},
    "ingress": {"enabled", "annotations"},
    "global": {"postgresqlSecretName", "dagsterHome", "serviceAccountName", "celeryConfigSecretName"},
    "dagster-user-deployments": {"enabled", "enableSubchart", "imagePullSecrets", "deployments"},
    "dagster-user-deployments.deployments[]": {
        "name",
        "image",
        "port",
        "dagsterApiGrpcArgs",
        "codeServerArgs",
        "includeConfigInLaunchedRuns",
        "env",
        "envConfigMaps",
        "envSecrets",
        "annotations",
        "nodeSelector",
        "affinity",
        "tolerations",
        "podSecurityContext",
        "securityContext",
        "resources",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "labels",
        "volumeMounts",
        "volumes",
        "schedulerName",
    },
    "dagster-user-deployments.deployments[].image": {"repository", "tag", "pullPolicy"},
    "dagster-user-deployments.deployments[].envSecrets[]": {"name"},
    "dagster-user-deployments.deployments[].env[]": {"name", "value", "valueFrom"},
    "runLauncher": {"type", "config"},
    "runLauncher.config": {"k8sRunLauncher", "celeryK8sRunLauncher", "customRunLauncher"},
    "runLauncher.config.k8sRunLauncher": {
        "image",
        "imagePullPolicy",
        "jobNamespace",
        "loadInclusterConfig",
        "kubeconfigFile",
        "envConfigMaps",
        "envSecrets",
        "envVars",
        "volumeMounts",
        "volumes",
        "labels",
        "failPodOnRunFailure",
        "resources",
        "runK8sConfig",
    },
    "runLauncher.config.k8sRunLauncher.envSecrets[]": {"name"},
    "postgresql": {
        "postgresqlScheme",
        "image",
        "enabled",
        "postgresqlHost",
        "postgresqlUsername",
        "postgresqlPassword",
        "postgresqlDatabase",
        "postgresqlParams",
        "service",
    },
    "dagsterDaemon": {
        "enabled",
        "image",
        "runCoordinator",
        "heartbeatTolerance",
        "env",
        "envConfigMaps",
        "envSecrets",
        "resources",
        "runMonitoring",
        "runRetries",
        "sensors",
        "schedules",
        "labels",
        "annotations",
        "nodeSelector",
        "affinity",
        "tolerations",
    },
    "dagsterDaemon.runCoordinator": {"enabled", "type", "config"},
    "dagsterDaemon.runCoordinator.config": {"queuedRunCoordinator", "customRunCoordinator"},
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator": {
        "maxConcurrentRuns",
        "tagConcurrencyLimits",
        "dequeueIntervalSeconds",
        "dequeueNumWorkers",
        "dequeueUseThreads",
        "blockOpConcurrencyLimitedRuns",
    },
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits[]": {"key", "value", "limit"},
    "dagsterDaemon.runMonitoring": {
        "enabled",
        "startTimeoutSeconds",
        "pollIntervalSeconds",
        "maxResumeRunAttempts",
        "freeSlotsAfterRunEndSeconds",
    },
    "dagsterDaemon.runRetries": {"enabled", "maxRetries", "retryOnAssetOrOpFailure"},
    "dagsterDaemon.sensors": {"useThreads", "numWorkers", "numSubmitWorkers"},
}


def _unknown_keys(value, path: str = "") -> list[str]:
    """Keys of `value` the chart does not take at their path (paths not listed above are not checked)."""
    found = []
    if isinstance(value, dict):
        allowed = CHART_KEYS.get(path)
        for key, child in value.items():
            if allowed is not None and key not in allowed:
                found.append(f"{path}.{key}".lstrip("."))
            found += _unknown_keys(child, f"{path}.{key}".lstrip("."))
    elif isinstance(value, list):
        for item in value:
            found += _unknown_keys(item, f"{path}[]")
    return found


def test_helm_values_use_only_keys_dagsters_chart_takes():
    values = yaml.safe_load(HELM.read_text())
    assert _unknown_keys(values) == []
    assert _unknown_keys(
        {"dagsterDaemon": {"runCoordinator": {"config": {"queuedRunCoordinator": {"dequeue_interval_seconds": 1}}}}}
    ) == ["dagsterDaemon.runCoordinator.config.queuedRunCoordinator.dequeue_interval_seconds"]
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["name"] == "giftflow" and deployment["dagsterApiGrpcArgs"] == ["-m", "giftflow"]
    assert {"name", "image", "port"} <= set(deployment)  # required by the user-deployments chart
    assert values["runLauncher"]["type"] == "K8sRunLauncher"


def test_helm_values_queue_runs_as_dagster_yaml_does():
    """One queue policy whatever the topology: the chart writes the daemon's dagster.yaml from these values."""
    values = yaml.safe_load(HELM.read_text())["dagsterDaemon"]
    instance = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    queued = values["runCoordinator"]["config"]["queuedRunCoordinator"]
    coordinator = instance["run_coordinator"]["config"]
    assert queued["dequeueIntervalSeconds"] == coordinator["dequeue_interval_seconds"]
    assert queued["dequeueUseThreads"] == coordinator["dequeue_use_threads"]
    assert queued["dequeueNumWorkers"] == coordinator["dequeue_num_workers"]
    assert queued["maxConcurrentRuns"] == instance["concurrency"]["runs"]["max_concurrent_runs"]
    assert queued["tagConcurrencyLimits"] == instance["concurrency"]["runs"]["tag_concurrency_limits"]
    assert values["sensors"] == {
        "useThreads": instance["sensors"]["use_threads"],
        "numWorkers": instance["sensors"]["num_workers"],
    }
    assert values["runRetries"]["maxRetries"] == instance["run_retries"]["max_retries"]


def test_docker_workspace_reaches_the_code_server_the_dockerfile_starts():
    workspace = yaml.safe_load((ROOT / "deploy/workspace.docker.yaml").read_text())["load_from"]
    assert workspace == [{"grpc_server": {"host": "giftflow", "port": 4000, "location_name": "giftflow"}}]
    dockerfile = (ROOT / "deploy/Dockerfile").read_text()
    assert '"code-server", "start", "-h", "0.0.0.0", "-p", "4000", "-m", "giftflow"' in dockerfile
