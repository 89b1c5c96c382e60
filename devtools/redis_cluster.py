"""A Redis Cluster on free local ports: `redis-server --cluster-enabled yes` per node,
joined with `redis-cli --cluster create`. The tests' second Redis (the state on a
cluster) and the failover drill's; `kill` stops one node as a crash would."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

from devtools.devstack import redis_server_argv, wait_for_port
from streamrec.errors import DevStackError

READY_TIMEOUT_S = 30.0
# A node's cluster bus listens on its port + 10000.
BUS_OFFSET = 10_000


def free_node_port() -> int:
    """A free port whose bus port (+10000) is free too, so at most 55535."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + BUS_OFFSET > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_OFFSET))
            except OSError:
                continue
        return port


class LocalRedisCluster:
    """`primaries` primaries with `replicas` replicas each, in `root`."""

    def __init__(self, root: Path, primaries: int = 3, replicas: int = 0) -> None:
        self.root = root
        self.primaries = primaries
        self.replicas = replicas
        self.ports: list[int] = []
        self._nodes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        """A cluster URL naming the first live node (the client learns the others)."""
        live = self.live_ports() or self.ports
        return f"redis+cluster://127.0.0.1:{live[0]}/0"

    def start(self) -> LocalRedisCluster:
        self.root.mkdir(parents=True, exist_ok=True)
        for _ in range(self.primaries * (1 + self.replicas)):
            self._start_node(free_node_port())
        for port in self.ports:
            wait_for_port(port)
        redis_cli = shutil.which("redis-cli")
        if redis_cli is None:
            raise DevStackError("redis-cli is not installed (it comes with redis-server)")
        create = [redis_cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports)]
        create += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
        done = subprocess.run(create, capture_output=True, check=False, timeout=60)
        if done.returncode != 0:
            self.stop()
            raise DevStackError(f"redis-cli --cluster create failed: {done.stdout!r}")
        self.wait_healthy()
        return self

    def _start_node(self, port: int) -> None:
        node_dir = self.root / str(port)
        node_dir.mkdir(exist_ok=True)
        # A primary down for --cluster-node-timeout ms is failed over to its replica.
        argv = redis_server_argv(port, node_dir, "--cluster-enabled", "yes",
                                 "--cluster-config-file", "nodes.conf",
                                 "--cluster-node-timeout", "2000")  # fmt: skip
        log = open(node_dir / "redis.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            self._nodes[port] = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        self.ports.append(port)

    def wait_healthy(self, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Until every live node says the cluster is ok and sees every slot served."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.1)
        raise DevStackError(f"the cluster on {self.ports} was not ok within {timeout_s:.0f} s")

    def healthy(self) -> bool:
        """Does every live node say the cluster is ok (every slot served)?"""
        return all(self._node_ok(port) for port in self.live_ports())

    def _node_ok(self, port: int) -> bool:
        try:
            with redis.Redis(port=port, socket_timeout=1) as node:
                info = node.cluster("info")
        except (redis.RedisError, OSError):
            return False
        return isinstance(info, dict) and info.get("cluster_state") == "ok"

    @property
    def pids(self) -> list[int]:
        return [node.pid for node in self._nodes.values()]

    def live_ports(self) -> list[int]:
        return [port for port, node in self._nodes.items() if node.poll() is None]

    def primary_ports(self) -> list[int]:
        """The live nodes that serve slots now."""
        primaries = []
        for port in self.live_ports():
            with redis.Redis(port=port, socket_timeout=1) as node:
                if node.info("replication").get("role") == "master":
                    primaries.append(port)
        return primaries

    def kill(self, port: int) -> None:
        """SIGKILL one node: a crash, nothing flushed or handed over."""
        node = self._nodes[port]
        os.kill(node.pid, signal.SIGKILL)
        node.wait()

    def flush(self) -> None:
        for port in self.primary_ports():
            with redis.Redis(port=port) as node:
                node.flushall()

    def stop(self) -> None:
        for node in self._nodes.values():
            if node.poll() is None:
                node.terminate()
        for node in self._nodes.values():
            try:
                node.wait(timeout=5)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait()
