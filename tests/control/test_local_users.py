"""Local users against the daemon and agentctl (issue 13), with real throwaway users: another
user's pre-made /tmp/agentd-UID (0777, a symlinked lock, a socket of their own), a read-role
user asking for a webhook's config, and an unreadable /run/agentd.

The users' code runs in forked children that drop to them (the interpreter lives under /root
here, which other users cannot execute, so ``runuser`` cannot start it); the parent imports
everything the child needs first."""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agentd.errors import StoreError
from agentd.lock import InstanceLock
from tests.control.helpers import TESTPLUGINS, Agent, config

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates users: needs root"),
]

GROUP = "agth2-read"
VICTIM = "agth2-victim"
ATTACKER = "agth2-attacker"
_DAEMON_MODULES = (
    "resource",
    "uvloop",
    "sqlite3",
    "aiosqlite",
    "psutil",
    "agentd.daemon",
    "agentd.store",
    "agentd.control.server",
    "agentd.control.handlers",
    "agentd.telemetry",
    "agentd.plugins.builtin",
)
SECRET = "Bearer tok-9f8e7d6c5b4a39281706"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def users() -> Iterator[None]:
    for user in (VICTIM, ATTACKER):
        subprocess.run(["userdel", user], capture_output=True, check=False)
    subprocess.run(["groupdel", GROUP], capture_output=True, check=False)
    _run("groupadd", GROUP)
    try:
        _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", GROUP, VICTIM)
        _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", ATTACKER)
        yield
    finally:
        for user in (VICTIM, ATTACKER):
            subprocess.run(["userdel", user], capture_output=True, check=False)
        subprocess.run(["groupdel", GROUP], capture_output=True, check=False)


def uid(user: str) -> int:
    return pwd.getpwnam(user).pw_uid


def as_user(user: str, fn: Callable[[], int], timeout: float = 60.0) -> tuple[int, str, str]:
    """``fn()`` as ``user`` (with its groups, no XDG_RUNTIME_DIR/AGENTD_SOCKET) in a forked
    child: (exit code, stdout, stderr). The child is killed after ``timeout``."""
    pw = pwd.getpwnam(user)
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115
            for var in ("XDG_RUNTIME_DIR", "AGENTD_SOCKET", "RUNTIME_DIRECTORY", "XDG_STATE_HOME"):
                os.environ.pop(var, None)
            os.environ["HOME"] = "/nonexistent"
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            code = fn()
        except BaseException as exc:
            print(f"child raised {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    killer = threading.Timer(timeout, lambda: os.kill(pid, signal.SIGKILL))
    killer.start()
    try:
        with open(out_r) as out, open(err_r) as err:
            stdout, stderr = out.read(), err.read()
        _, status = os.waitpid(pid, 0)
    finally:
        killer.cancel()
        killer.join()
    return os.waitstatus_to_exitcode(status), stdout, stderr


def agentctl(*argv: str) -> Callable[[], int]:
    from agentd.cli import agentctl as ctl

    # everything agentctl imports lazily, imported here (the child cannot read the stdlib)
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        ctl.main(["--socket", "/nonexistent/x.sock", *argv])
    return lambda: ctl.main(list(argv))


@pytest.fixture
def tmp_for(users: None) -> Iterator[Path]:
    """/tmp/agentd-<victim uid> must not exist before (or after) a test."""
    path = Path(f"/tmp/agentd-{uid(VICTIM)}")
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_runtime_dir_made_by_another_user_is_refused_and_its_lock_symlink_not_followed(
    tmp_for: Path, short_tmp: Path
) -> None:
    # the victim's file the planted lock points at, and the victim's own state directory
    home = short_tmp / "victim"
    home.mkdir()
    precious = home / "precious"
    precious.write_text("keep me\n")
    state = home / "state"
    state.mkdir()
    for p in (home, precious, state):
        os.chown(p, uid(VICTIM), -1)
    os.chmod(short_tmp, 0o755)

    def plant() -> int:
        os.mkdir(tmp_for)
        os.chmod(tmp_for, 0o777)
        os.symlink(precious, tmp_for / "agentd.lock")
        return 0

    assert as_user(ATTACKER, plant)[0] == 0
    cfg = home / "agentd.toml"
    cfg.write_text("[log]\nheartbeat = 0\n[store]\nenabled = false\n[sensors.system]\n")
    from agentd.cli import agentd as agentd_cli

    for name in _DAEMON_MODULES:  # what `agentd run` imports lazily (see agentctl())
        importlib.import_module(name)

    # the default runtime directory of a user without a session: /tmp/agentd-UID
    def run() -> int:
        return agentd_cli.main(
            ["run", "--config", str(cfg), "--state-dir", str(state), "--log-level", "warning"]
        )

    # an agentd that accepted the directory would run on: killed after 10 s
    code, _, err = as_user(VICTIM, run, timeout=10)
    assert precious.read_text() == "keep me\n"
    assert code == 1
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert str(tmp_for) in lines[0]
    assert f"owned by uid {uid(ATTACKER)}" in lines[0]
    assert "Traceback" not in err


def test_the_lock_is_opened_without_following_a_symlink(short_tmp: Path) -> None:
    target = short_tmp / "target"
    target.write_text("keep me\n")
    (short_tmp / "agentd.lock").symlink_to(target)
    with pytest.raises(StoreError, match="is a symlink"):
        InstanceLock(short_tmp / "agentd.lock").acquire()
    assert target.read_text() == "keep me\n"


def test_agentctl_sends_nothing_to_another_users_socket(tmp_for: Path) -> None:
    """The attacker made /tmp/agentd-<victim> and listens there; the victim's agentctl must
    refuse it before it sends its request (here a session with a secret)."""
    ready_r, ready_w = os.pipe()
    got_r, got_w = os.pipe()

    def listen() -> int:
        os.mkdir(tmp_for)
        os.chmod(tmp_for, 0o777)
        srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        srv.bind(str(tmp_for / "agentd.sock"))
        os.chmod(tmp_for / "agentd.sock", 0o777)
        srv.listen(4)
        os.write(ready_w, b"1")
        srv.settimeout(10)
        conn, _ = srv.accept()
        conn.settimeout(3)
        total = 0
        with contextlib.suppress(OSError):
            while chunk := conn.recv(65536):
                total += len(chunk)
        os.write(got_w, str(total).encode())
        return 0

    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            pw = pwd.getpwnam(ATTACKER)
            os.setgroups([])
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            code = listen()
        finally:
            os._exit(code)
    try:
        assert os.read(ready_r, 1) == b"1"
        code, out, err = as_user(VICTIM, agentctl("sessions", "put", "door", '{"pin": "4711"}'))
        os.close(got_w)
        got = os.read(got_r, 32)
    finally:
        os.waitpid(pid, 0)
    assert got == b"0", f"the planted server received {got!r} bytes"
    assert code == 4, (code, out, err)
    assert err.count("\n") == 1
    assert f"uid {uid(ATTACKER)}" in err
    assert str(tmp_for / "agentd.sock") in err


def test_agentctl_exits_4_with_one_line_when_run_agentd_is_not_readable(users: None) -> None:
    system = Path("/run/agentd")
    if system.exists():
        pytest.skip("/run/agentd exists on this machine (a real agentd?)")
    system.mkdir(mode=0o700)
    try:
        code, out, err = as_user(VICTIM, agentctl("status"))
    finally:
        system.rmdir()
    assert code == 4, (code, out, err)
    assert err.count("\n") == 1, err
    assert "/run/agentd" in err
    assert "Traceback" not in err


def test_read_role_plugin_never_shows_a_webhook_authorization_header(
    users: None, short_tmp: Path
) -> None:
    os.chmod(short_tmp, 0o755)
    extra = (
        '[actuators.hook]\nplugin = "webhook"\n'
        'url = "http://user:pa55w0rd-xyz@127.0.0.1:9/hook"\n'
        f'headers = {{ Authorization = "{SECRET}" }}\n'
    )
    text = config(short_tmp, control=f'group = "{GROUP}"') + extra
    with Agent(short_tmp, text, argv=TESTPLUGINS) as agent:
        agent.ready()
        os.chmod(agent.runtime_dir, 0o755)
        sock = str(agent.socket)
        for argv in (["plugin", "hook"], ["--json", "plugin", "hook"]):
            code, out, err = as_user(VICTIM, agentctl("--socket", sock, *argv))
            assert code == 0, err
            assert "Authorization" in out  # the key is shown, its value is not
            assert "<redacted>" in out
            for word in ("tok-9f8e7d6c5b4a39281706", "Bearer", "pa55w0rd-xyz"):
                assert word not in out, argv
        assert agent.stop() == 0
    assert SECRET not in agent.log()


def test_a_read_user_holding_every_connection_leaves_room_for_root_and_is_told_busy(
    users: None, short_tmp: Path
) -> None:
    os.chmod(short_tmp, 0o755)
    text = config(short_tmp, control=f'group = "{GROUP}"\nmax_connections = 4')
    with Agent(short_tmp, text, argv=TESTPLUGINS) as agent:
        agent.ready()
        os.chmod(agent.runtime_dir, 0o755)
        sock = str(agent.socket)
        ready_r, ready_w = os.pipe()
        done_r, done_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the read-role user takes every connection it may, and keeps them
            code = 99
            try:
                os.close(done_w)  # else our own copy keeps done_r from ever seeing EOF
                pw = pwd.getpwnam(VICTIM)
                os.setgroups(os.getgrouplist(VICTIM, pw.pw_gid))
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                held = []
                for _ in range(4):
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    s.connect(sock)
                    held.append(s)
                os.write(ready_w, b"1")
                os.read(done_r, 1)
                code = 0
            finally:
                os._exit(code)
        try:
            assert os.read(ready_r, 1) == b"1"
            time.sleep(0.2)
            # root's agentctl still gets in (a place kept for admins)
            proc = agent.ctl("status")
            assert proc.returncode == 0, proc.stderr
            # the read user's next connection is refused with a reason, not a broken pipe
            code, out, err = as_user(VICTIM, agentctl("--socket", sock, "status"), timeout=20)
            assert code == 1, (code, out, err)
            assert err == ("agentctl: too many connections (limit 4, and 2 kept for admins)\n"), err
        finally:
            os.close(done_w)
            os.waitpid(pid, 0)
        assert agent.stop() == 0
