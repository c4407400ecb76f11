"""A throwaway primary and a real streaming replica of it, for the replica tests.

The shared test server is not copied (a base backup of it would copy every
database on it, other checkouts' included): the tests initdb their own small
primary with the server binaries (``pg_config --bindir``), migrate it with the
real CLI, take ``pg_basebackup -R`` of it, and start the copy as a hot
standby. Both run as the ``postgres`` user when the tests run as root
(``pg_ctl`` refuses root), on free ports, in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.live import free_port


def bindir() -> Path:
    candidates = []
    if shutil.which("pg_config"):
        result = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        candidates.append(Path(result.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
    for candidate in candidates:
        if (candidate / "initdb").exists() and (candidate / "pg_basebackup").exists():
            return candidate
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_basebackup) not found")


def _as_postgres(args: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    command = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]


@dataclass
class Cluster:
    root: Path
    primary_port: int
    replica_port: int
    bin: Path

    def url(self, port: int, database: str = "flowforge") -> str:
        return f"postgresql://postgres@127.0.0.1:{port}/{database}"

    @property
    def primary_url(self) -> str:
        return self.url(self.primary_port)

    @property
    def replica_url(self) -> str:
        return self.url(self.replica_port)

    def pg_ctl(self, node: str, *args: str) -> None:
        _as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.root / node), *args], timeout=60)

    def start(self, node: str) -> None:
        port = self.primary_port if node == "primary" else self.replica_port
        self.pg_ctl(
            node, "-w", "-l", str(self.root / f"{node}.log"),
            "-o", f"-p {port} -k {self.root} -c listen_addresses=127.0.0.1",
            "start",
        )  # fmt: skip

    def stop(self, node: str, mode: str = "fast") -> None:
        self.pg_ctl(node, "-w", "-m", mode, "stop")


@contextmanager
def primary_and_replica() -> Iterator[Cluster]:
    binaries = bindir()
    root = Path(tempfile.mkdtemp(prefix="ff-replica-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    cluster = Cluster(root, free_port(), free_port(), binaries)
    try:
        _as_postgres(
            [str(binaries / "initdb"), "-D", str(root / "primary"), "-U", "postgres",
             "-A", "trust", "--no-sync"],
            timeout=120,
        )  # fmt: skip
        with (root / "primary" / "postgresql.conf").open("a") as conf:
            # Throwaway data: durability off for speed; a standby needs WAL senders.
            conf.write("\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")
            conf.write("wal_level = replica\nmax_wal_senders = 5\nmax_connections = 60\n")
        cluster.start("primary")
        _as_postgres(
            [str(binaries / "createdb"), "-h", "127.0.0.1", "-p", str(cluster.primary_port),
             "-U", "postgres", "flowforge"]
        )  # fmt: skip
        yield cluster  # the caller migrates it (the real CLI), then start_replica()
    finally:
        for node in ("replica", "primary"):
            if (root / node / "postmaster.pid").exists():
                with contextlib.suppress(subprocess.CalledProcessError):
                    cluster.stop(node, "immediate")
        shutil.rmtree(root, ignore_errors=True)


def start_replica(cluster: Cluster) -> None:
    """Base-backup the primary into a standby (``-R``) and start it."""
    _as_postgres(
        [str(cluster.bin / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(cluster.primary_port),
         "-U", "postgres", "-D", str(cluster.root / "replica"), "-R", "-X", "stream",
         "-c", "fast"],
        timeout=120,
    )  # fmt: skip
    cluster.start("replica")
