"""A real PostgreSQL server for the audit tests: initdb + pg_ctl on a temporary directory,
listening on 127.0.0.1 only, trust authentication, torn down at the end of the session.

As root (CI), the server runs as the ``postgres`` OS user (``runuser``); otherwise as the current
user. Binaries: ``$GUARDRAILS_PG_BINDIR``, else /usr/lib/postgresql/<newest>/bin, else PATH.
Missing binaries fail the tests under ``CI=true`` and skip them elsewhere.

Use ``pg_server`` (a session fixture: import it into the test module) and ``server.create_db()``
for a fresh database per test. Every module that imports the fixture shares one server.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

_SERVER: PgServer | None = None
_USERS = 0


def free_port() -> int:
    """A free port BELOW the kernel's ephemeral range. The server is stopped and restarted on the
    same port mid-test; an ephemeral port may meanwhile be taken by an outgoing connection of the
    busy suite, or by a client retrying it (a TCP self-connect), and the restart would fail."""
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    candidates = list(range(max(1024, low - 12_000), low))
    random.shuffle(candidates)
    for port in candidates[:500]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket() as s:  # nothing free below the range: fall back to any free port
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_bindir() -> Path | None:
    env = os.environ.get("GUARDRAILS_PG_BINDIR")
    candidates = [Path(env)] if env else []
    root = Path("/usr/lib/postgresql")
    if root.is_dir():
        versions = sorted((p for p in root.iterdir() if p.name.split(".")[0].isdigit()),
                          key=lambda p: int(p.name.split(".")[0]), reverse=True)
        candidates += [v / "bin" for v in versions]
    which = shutil.which("pg_ctl")
    if which:
        candidates.append(Path(which).parent)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()), None)


class PgServer:
    """One PostgreSQL cluster in a temporary directory."""

    def __init__(self, bindir: Path):
        self.bindir = bindir
        self.as_root = os.geteuid() == 0
        # as root the server runs as 'postgres', which must reach the directory: /tmp, not $TMPDIR
        base = "/tmp" if self.as_root and os.path.isdir("/tmp") else None
        self.root = Path(tempfile.mkdtemp(prefix="gp-pg-", dir=base))
        self.data = self.root / "data"
        self.sock = self.root / "sock"
        self.log = self.root / "server.log"
        self.sock.mkdir()
        if self.as_root:  # postgres refuses to run as root: hand the directory to its user
            pw = pwd.getpwnam("postgres")
            for p in (self.root, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        self.port = free_port()
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        self.start()
        self._watchdog = self._start_watchdog()

    def _start_watchdog(self) -> subprocess.Popen[bytes]:
        """A pytest killed without teardown (SIGTERM from a timeout, SIGKILL) must not leave a
        server behind: a detached shell stops the cluster once this process is gone."""
        stop = [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
        if self.as_root:
            stop = ["runuser", "-u", "postgres", "--", *stop]
        script = (f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 2; done; "
                  f"{shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(str(self.root))}")
        return subprocess.Popen(["sh", "-c", script], start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _run(self, tool: str, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bindir / tool), *args]
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=str(self.root))
        if check and out.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr or out.stdout}\n{log}")
        return out

    def start(self) -> None:
        opts = (f"-k {self.sock} -p {self.port} -c listen_addresses=127.0.0.1 -c max_connections=200 "
                "-c shared_buffers=16MB")
        # After an immediate stop the server replays WAL first; on a box with every core busy that
        # outlasted pg_ctl's default 60 s wait late in the suite.
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "240", "start",
                  timeout=300)

    def stop(self, mode: str = "fast") -> None:
        if mode == "immediate":
            # Still a crash: open connections die and nothing is flushed at shutdown. The checkpoint
            # only bounds the WAL the restart must replay (the whole session's, otherwise).
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
                    conn.execute("CHECKPOINT")
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False)

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{db}"

    def create_db(self, prefix: str = "audit") -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        self._watchdog.kill()
        self._watchdog.wait()
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"PostgreSQL tests cannot run under CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL tests skipped: {reason}")


def acquire() -> PgServer:
    """The session's server (started on first use); every acquire() is paired with release()."""
    global _SERVER, _USERS
    if _SERVER is None:
        bindir = find_bindir()
        if bindir is None:
            _unavailable("no PostgreSQL server binaries (initdb, pg_ctl); install postgresql "
                         "or set GUARDRAILS_PG_BINDIR")
        try:
            import psycopg  # noqa: F401
        except ImportError:
            _unavailable("psycopg 3 is not installed (pip install 'guardrails-plugin[postgres]')")
        if os.geteuid() == 0:
            try:
                pwd.getpwnam("postgres")
            except KeyError:
                _unavailable("running as root and there is no 'postgres' user to run the server")
            if shutil.which("runuser") is None:
                _unavailable("running as root and there is no runuser to start the server as 'postgres'")
        _SERVER = PgServer(bindir)  # type: ignore[arg-type]
        atexit.register(_shutdown)
    _USERS += 1
    return _SERVER


def release() -> None:
    global _USERS
    _USERS -= 1
    if _USERS <= 0:
        _shutdown()


def _shutdown() -> None:
    global _SERVER
    if _SERVER is not None:
        with contextlib.suppress(Exception):
            _SERVER.close()
        _SERVER = None


@pytest.fixture(scope="session")
def pg_server():
    server = acquire()
    yield server
    release()


@pytest.fixture()
def pg_url(pg_server: PgServer) -> str:
    return pg_server.create_db()
