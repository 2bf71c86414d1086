"""Which Kafka the tests use, in the order ARCHITECTURE.md sets: BEACON_KAFKA_BOOTSTRAP when set;
a testcontainers KafkaContainer when a Docker engine answers; else the local jar broker, started
here and stopped afterwards if this run started it. With CI=true, no broker is a failure."""

import os
import shutil
import socket
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
KAFKA_SH = ROOT / "tools" / "kafka" / "kafka.sh"


class LocalBroker:
    """A broker run by tools/kafka/kafka.sh on `port`; it can be stopped and started again."""

    def __init__(self, port: int = 9092):
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        self.started_here = False

    def _sh(self, action: str, timeout: float = 300) -> subprocess.CompletedProcess:
        env = {**os.environ, "BEACON_KAFKA_PORT": str(self.port)}
        return subprocess.run([str(KAFKA_SH), action], env=env, capture_output=True, text=True,
                              timeout=timeout)

    def running(self) -> bool:
        return self._sh("status").returncode == 0

    def start(self) -> None:
        was_running = self.running()
        result = self._sh("start")
        if result.returncode != 0:
            raise RuntimeError(f"kafka.sh start failed:\n{result.stdout}\n{result.stderr}")
        self.started_here = self.started_here or not was_running

    def stop(self) -> None:
        self._sh("stop")

    def kill(self) -> None:
        """kill -9: the broker gets no chance to shut down cleanly."""
        pid = (ROOT / "var" / f"kafka-{self.port}" / "kafka.pid")
        if self.port == 9092:
            pid = ROOT / "var" / "kafka" / "kafka.pid"
        if pid.exists():
            subprocess.run(["kill", "-9", pid.read_text().strip()], check=False)


def docker_answers() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def port_open(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
