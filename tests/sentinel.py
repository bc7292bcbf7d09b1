"""A replica and a Sentinel of the test's own, next to a ``RedisServer`` primary: real ``redis-server``
processes on free ports in temp dirs, which tests may SIGKILL."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis as sync_redis

from tests.processes import wait_until
from tests.redis_server import RedisServer, as_db, free_port


class ReplicaServer(RedisServer):
    """``redis-server --replicaof 127.0.0.1 <primary>``, with AOF (appendfsync always) like the primary."""

    def __init__(self, directory: Path, primary_port: int, *, port: int | None = None) -> None:
        super().__init__(directory, appendonly=True, port=port)
        self.primary_port = primary_port

    def start(self) -> None:
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log"),
                "--appendonly", "yes", "--appendfsync", "always",
                "--replicaof", "127.0.0.1", str(self.primary_port)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._answers, timeout=10, what=f"replica on port {self.port}", interval=0.02)

    def _answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except sync_redis.exceptions.RedisError:
            return False

    def wait_synced(self, timeout: float = 15) -> None:
        def linked() -> bool:
            info = as_db(self.client()).info("replication")
            return info.get("master_link_status") == "up" and not info.get("master_sync_in_progress")

        wait_until(linked, timeout=timeout, what=f"replica {self.port} in sync with {self.primary_port}")


class SentinelServer:
    """``redis-server sentinel.conf --sentinel`` monitoring one primary under ``master`` with quorum 1."""

    def __init__(self, directory: Path, primary_port: int, *, master: str = "m",
                 down_after_ms: int = 1000, failover_timeout_ms: int = 5000) -> None:
        self.dir = directory
        self.port = free_port()
        self.master = master
        self.conf = directory / "sentinel.conf"
        # Sentinel rewrites its config file (known replicas, epochs), so it must be a file of its own.
        self.conf.write_text("\n".join([
            f"port {self.port}", "bind 127.0.0.1", "daemonize no", f"dir {directory}",
            f"logfile {directory / 'sentinel.log'}",
            f"sentinel monitor {master} 127.0.0.1 {primary_port} 1",
            f"sentinel down-after-milliseconds {master} {down_after_ms}",
            f"sentinel failover-timeout {master} {failover_timeout_ms}",
            f"sentinel parallel-syncs {master} 1", "",
        ]))
        self.proc: subprocess.Popen[bytes] | None = None

    def client(self) -> sync_redis.Redis:
        return sync_redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def start(self) -> None:
        args = ["redis-server", str(self.conf), "--sentinel"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self.master_port, timeout=10, what=f"sentinel on port {self.port}", interval=0.02)

    def master_port(self) -> int | None:
        """The port of the master as clients see it: Sentinel's master entry, if it is up (not subjectively
        or objectively down). That is the check redis-py's ``Sentinel.discover_master`` makes, so a client
        can reach the new master from the moment this names it. None while there is no such master."""
        try:
            state = self.client().sentinel_master(self.master)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        except sync_redis.exceptions.RedisError:
            return None
        if not state.get("is_master") or state.get("is_sdown") or state.get("is_odown"):
            return None
        return int(state["port"])

    def replica_ports(self) -> list[int]:
        """Replicas Sentinel knows and considers up."""
        try:
            replicas = self.client().sentinel_slaves(self.master)  # type: ignore[no-untyped-call]  # redis-py leaves it unannotated
        except sync_redis.exceptions.RedisError:
            return []
        return [int(r["port"]) for r in replicas if not r["is_sdown"] and not r["is_odown"]]

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{self.master}/{db}"

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        path = self.dir / "sentinel.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def __enter__(self) -> SentinelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()

