"""Running streamrec services as child processes (the demo, benchmarks and tests).

A `ServiceProcess` starts `streamrec <command>` with the given `Settings`
passed as `STREAMREC_*` variables, waits until its `/readyz` answers, and
stops or kills it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from streamrec.errors import StreamrecError
from streamrec.settings import Settings


class ServiceProcess:
    def __init__(self, settings: Settings, args: list[str], log_path: Path, port: int) -> None:
        self.settings = settings
        self.args = args
        self.log_path = log_path
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        env = {**self.settings.child_env(), "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cli", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout_s: float = 90.0) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://127.0.0.1:{self.port}/readyz"
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StreamrecError(
                    f"`streamrec {' '.join(self.args)}` exited with {self.proc.returncode}; "
                    f"see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise StreamrecError(f"{url} not ready within {timeout_s:.0f} s; see {self.log_path}")

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def kill(self) -> None:
        """SIGKILL: the crash a test wants to survive."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def start_ready(self, timeout_s: float = 90.0) -> ServiceProcess:
        """Started and ready; stopped again if it never gets ready."""
        self.start()
        try:
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> ServiceProcess:
        return self.start_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
