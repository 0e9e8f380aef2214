"""A throwaway (or, for ``make run``, persistent) PostgreSQL cluster on 127.0.0.1.

``initdb`` runs once per data folder; a folder that already holds a cluster (``PG_VERSION``)
is started as it is, so ``make run`` keeps its data from one start to the next. Because
``initdb`` costs a second or two, a :class:`ClusterTemplate` is initialised once and copied
for each further cluster.

PostgreSQL refuses to run as root. When the supervisor is root, the server and ``initdb`` run
as the ``postgres`` account (or a system account ``medsvc-pg`` made for the purpose), which
owns the data folder and must be able to reach it through every parent folder.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import stat
import subprocess
from collections.abc import Sequence
from pathlib import Path

import asyncpg

from . import binaries
from .procs import ManagedProcess, ProcessError, RunAs, child_setup, poll

PG_USER = "medsvc"
PG_DATABASE = "medsvc"
_FALLBACK_ACCOUNT = "medsvc-pg"
# Settings that trade durability for speed: for tests only, never for `make run`.
_FAST = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def server_account() -> RunAs | None:
    """The account PostgreSQL runs as: ``None`` (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", _FALLBACK_ACCOUNT):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return RunAs(name, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
         _FALLBACK_ACCOUNT],
        check=True,
    )  # fmt: skip
    pw = pwd.getpwnam(_FALLBACK_ACCOUNT)
    return RunAs(_FALLBACK_ACCOUNT, pw.pw_uid, pw.pw_gid)


def check_reachable(folder: Path, account: RunAs | None) -> None:
    """Raise :class:`ProcessError` if ``account`` cannot search every parent of ``folder``."""
    if account is None:
        return
    groups = {account.gid} | {g.gr_gid for g in _groups_of(account.name)}
    for parent in folder.resolve().parents:
        st = parent.stat()
        if st.st_uid == account.uid:
            ok = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            ok = bool(st.st_mode & stat.S_IXGRP)
        else:
            ok = bool(st.st_mode & stat.S_IXOTH)
        if not ok:
            raise ProcessError(
                f"PostgreSQL runs as {account.name!r}, which cannot enter {parent} "
                f"(mode {stat.filemode(st.st_mode)}); give it o+x or put the data elsewhere"
            )


def _groups_of(user: str) -> list:  # type: ignore[type-arg]
    import grp

    return [g for g in grp.getgrall() if user in g.gr_mem]


def _chown_tree(root: Path, account: RunAs | None) -> None:
    if account is None:
        return
    os.chown(root, account.uid, account.gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), account.uid, account.gid, follow_symlinks=False)


async def initdb(data_dir: Path, account: RunAs | None) -> None:
    """Create a cluster in the (absent or empty) folder ``data_dir``."""
    check_reachable(data_dir, account)
    data_dir.mkdir(parents=True, exist_ok=True)
    data_dir.chmod(0o700)
    _chown_tree(data_dir, account)
    proc = await asyncio.create_subprocess_exec(
        binaries.pg_bin("initdb"),
        "-D", str(data_dir), "-U", PG_USER, "--auth=trust", "--encoding=UTF8",
        "--locale=C.UTF-8", "--no-sync", "--no-instructions",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=data_dir,
        preexec_fn=child_setup(signal.SIGKILL, account),
    )  # fmt: skip
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise ProcessError(f"initdb {data_dir} failed:\n{out.decode('utf-8', 'replace')}")


class ClusterTemplate:
    """One ``initdb``'d folder, copied into each new cluster (a file copy beats ``initdb``)."""

    def __init__(self, folder: Path, account: RunAs | None) -> None:
        self.folder = folder
        self.account = account
        self._lock = asyncio.Lock()

    async def copy_to(self, data_dir: Path) -> None:
        """Fill the (absent or empty) ``data_dir`` with a fresh cluster."""
        async with self._lock:
            if not (self.folder / "PG_VERSION").exists():
                shutil.rmtree(self.folder, ignore_errors=True)
                await initdb(self.folder, self.account)
        check_reachable(data_dir, self.account)
        if data_dir.exists():
            data_dir.rmdir()  # must be empty: we never copy over a cluster
        await asyncio.to_thread(shutil.copytree, self.folder, data_dir, symlinks=True)
        await asyncio.to_thread(_chown_tree, data_dir, self.account)


# Room for a bucket move's parallel streams (resharder/move.py MAX_STREAMS): 4 streams of
# 1 + 2 workers, beside the launcher and parallel query's workers; the same in the manifests.
REPLICATION_SETTINGS = (
    "-c", "max_logical_replication_workers=16",
    "-c", "max_worker_processes=24",
    "-c", "max_replication_slots=16",
    "-c", "max_wal_senders=16",
)  # fmt: skip


class PostgresServer(ManagedProcess):
    """A PostgreSQL cluster in ``data_dir`` serving ``127.0.0.1:port`` (TCP only).

    ``fast=True`` turns off fsync and friends: for tests, where speed matters and a crash
    may lose data. ``settings`` are further ``name=value`` settings, passed as ``-c``. The
    database ``medsvc`` (owner ``medsvc``, trust auth) is created on the first start.
    """

    def __init__(
        self,
        name: str,
        data_dir: Path,
        port: int,
        log_path: Path,
        *,
        fast: bool = False,
        template: ClusterTemplate | None = None,
        account: RunAs | None = None,
        max_connections: int = 200,
        settings: Sequence[str] = (),
    ) -> None:
        argv = [
            binaries.pg_bin("postgres"), "-D", str(data_dir), "-p", str(port),
            "-c", "listen_addresses=127.0.0.1", "-c", "unix_socket_directories=",
            "-c", f"max_connections={max_connections}",
            # A bucket move (resharder/) copies and catches up by logical replication, in
            # several streams at once: each an apply worker and two table-sync workers on the
            # target, and as many slots and WAL senders on the source.
            "-c", "wal_level=logical",
            *REPLICATION_SETTINGS,
        ]  # fmt: skip
        if fast:
            for setting in _FAST:
                argv += ["-c", setting]
        # Further "name=value" settings (a benchmark's pg_stat_statements, commit_delay).
        for setting in settings:
            argv += ["-c", setting]
        # SIGINT is PostgreSQL's "fast shutdown": roll back open transactions, checkpoint, exit.
        super().__init__(
            name, argv, log_path, cwd=data_dir, run_as=account,
            stop_signal=signal.SIGINT, stop_timeout=30.0,
        )  # fmt: skip
        self.data_dir = data_dir
        self.port = port
        self.fast = fast
        self.template = template
        self.account = account

    @property
    def dsn(self) -> str:
        """DSN of the ``medsvc`` database."""
        return self.dsn_for(PG_DATABASE)

    def dsn_for(self, database: str) -> str:
        """DSN of ``database`` on this server."""
        return f"postgresql://{PG_USER}@127.0.0.1:{self.port}/{database}"

    async def prepare(self) -> None:
        """Create the cluster unless ``data_dir`` already holds one."""
        if (self.data_dir / "PG_VERSION").exists():
            check_reachable(self.data_dir, self.account)
            return
        if self.data_dir.exists() and any(self.data_dir.iterdir()):
            raise ProcessError(f"{self.data_dir} is neither empty nor a PostgreSQL cluster")
        if self.template is not None:
            await self.template.copy_to(self.data_dir)
        else:
            await initdb(self.data_dir, self.account)

    async def wait_ready(self) -> None:
        """Wait until a real connection succeeds, then create ``medsvc`` if missing."""

        async def connects() -> bool:
            conn = await asyncpg.connect(self.dsn_for("postgres"), timeout=2)
            try:
                if not await conn.fetchval(
                    "SELECT 1 FROM pg_database WHERE datname = $1", PG_DATABASE
                ):
                    await conn.execute(f'CREATE DATABASE "{PG_DATABASE}"')
            finally:
                await conn.close()
            return True

        await poll(f"{self.name} (postgres :{self.port})", connects, proc=self, timeout=30)
