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
