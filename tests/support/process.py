"""Beacon as a real subprocess (`beacon run ...`), for tests that kill and restart it."""

import os
import signal
import subprocess
import time
from pathlib import Path

import httpx

from tests.support.brokers import free_port

ROOT = Path(__file__).resolve().parents[2]
BEACON = str(ROOT / ".venv" / "bin" / "beacon")


def beacon_env(settings) -> dict[str, str]:
    """The BEACON_* environment that gives a subprocess the same settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BEACON_")}
    for name, value in settings.model_dump().items():
        if value is not None:
            env[f"BEACON_{name.upper()}"] = str(value)
    return env


def beacon(settings, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([BEACON, *args], env=beacon_env(settings), capture_output=True,
                          text=True, timeout=timeout, check=True)


class BeaconProcess:
    def __init__(self, settings, service: str, log_path: Path):
        self.settings, self.service, self.log_path = settings, service, log_path
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 60) -> "BeaconProcess":
        log = open(self.log_path, "a")  # noqa: SIM115 - the child process keeps it open
        self.proc = subprocess.Popen([BEACON, "run", self.service, "--port", str(self.port)],
                                     env=beacon_env(self.settings), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"beacon run {self.service} exited: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"beacon run {self.service} not ready in {wait} s")

    def kill(self) -> None:
        """kill -9: no shutdown, no flush, no commit."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.kill()
