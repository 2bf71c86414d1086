"""docker-compose.yml: `docker compose config` where a Docker Compose exists; without one (as on
the CI machines, which have no Docker engine), the same promises are checked from the YAML."""

import os
import shutil
import subprocess
from pathlib import Path

import yaml

from services.common.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"


def _compose_command() -> list[str] | None:
    if shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_compose_file_is_valid():
    command = _compose_command()
    if command:
        secrets = {"BEACON_SECRET_KEY": "k" * 32, "BEACON_WEBHOOK_SECRET": "w" * 32}
        result = subprocess.run([*command, "-f", str(COMPOSE), "config", "-q"],
                                capture_output=True, text=True, cwd=ROOT,
                                env={**os.environ, **secrets})
        assert result.returncode == 0, result.stderr
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"kafka", "postgres", "intake", "escalation", "notifier"} <= set(services)
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    assert any(s.get("image", "").startswith("postgres:") for s in services.values())
    for name in ("intake", "escalation", "notifier"):
        assert services[name]["command"] == ["run", name]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_compose_environment_is_what_beacon_reads():
    spec = yaml.safe_load(COMPOSE.read_text())
    known = {f"BEACON_{name.upper()}" for name in Settings.model_fields}
    for name in ("intake", "escalation", "notifier", "migrate"):
        env = spec["services"][name]["environment"]
        unknown = {k for k in env if k.startswith("BEACON_")} - known
        assert not unknown, f"{name}: settings Beacon does not read: {unknown}"
        assert env["BEACON_DATABASE_URL"].startswith("postgresql+asyncpg://")
        # No placeholder secret to fall back on: compose stops until they are set.
        for secret in ("BEACON_SECRET_KEY", "BEACON_WEBHOOK_SECRET"):
            assert env[secret].startswith("${" + secret + ":?"), env[secret]
