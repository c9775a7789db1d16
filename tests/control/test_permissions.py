"""Access control with real users and a real group: the socket is 0660 and owned by the control
group; a group member reads but may not change state; anyone else cannot even connect.

The clients run in forked children that drop to the test users (the interpreter lives under
/root here, which other users cannot execute) and call agentctl's ``main`` there."""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.control.helpers import TESTPLUGINS, Agent, config

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="creates users and a group: needs root"),
]

GROUP = "agtctl-read"
MEMBER = "agtctl-member"
OTHER = "agtctl-other"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def users() -> Iterator[None]:
    for user in (MEMBER, OTHER):
        subprocess.run(["userdel", user], capture_output=True, check=False)
    subprocess.run(["groupdel", GROUP], capture_output=True, check=False)
    _run("groupadd", GROUP)
    try:
        # -N: the primary group is the default one, so membership is a supplementary group
        _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", "-G", GROUP, MEMBER)
        _run("useradd", "-M", "-N", "-s", "/usr/sbin/nologin", OTHER)
        yield
    finally:
        for user in (MEMBER, OTHER):
            subprocess.run(["userdel", user], capture_output=True, check=False)
        subprocess.run(["groupdel", GROUP], capture_output=True, check=False)


def agentctl_as(user: str, *argv: str) -> tuple[int, str, str]:
    """Run ``agentctl ARGV`` as ``user`` (with its groups) in a forked child."""
    from agentd.cli import agentctl

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
            os.setgroups(os.getgrouplist(user, pw.pw_gid))
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            code = agentctl.main(list(argv))
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(err_w)
    with open(out_r) as out, open(err_r) as err:
        stdout, stderr = out.read(), err.read()
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), stdout, stderr


def test_roles_by_peer_credentials(users: None, short_tmp: Path) -> None:
    os.chmod(short_tmp, 0o755)
    control = f'group = "{GROUP}"'
    with Agent(short_tmp, config(short_tmp, control=control), argv=TESTPLUGINS) as agent:
        agent.ready()
        st = os.stat(agent.socket)
        assert stat.S_IMODE(st.st_mode) == 0o660
        assert st.st_gid == grp.getgrnam(GROUP).gr_gid
        # the runtime directory lets the group through to the socket
        run_st = os.stat(agent.runtime_dir)
        assert run_st.st_gid == st.st_gid
        assert run_st.st_mode & stat.S_IXGRP
        # open the directory to everyone: only the socket's own mode decides now
        os.chmod(agent.runtime_dir, 0o755)
        sock = str(agent.socket)

        code, out, err = agentctl_as(MEMBER, "--socket", sock, "status")
        assert (code, err) == (0, "")
        assert out.startswith("● agentd 0.1.0 - running\n")
        code, out, _ = agentctl_as(MEMBER, "--socket", sock, "--json", "hello")
        assert code == 0
        assert '"role": "read"' in out
        code, out, err = agentctl_as(MEMBER, "--socket", sock, "plugins")
        assert code == 0
        member_uid = pwd.getpwnam(MEMBER).pw_uid
        for cmd in (["pause"], ["tick"], ["reload"], ["act", "log", "x"]):
            code, out, err = agentctl_as(MEMBER, "--socket", sock, *cmd)
            assert code == 4, (cmd, err)
            assert err == f"agentctl: {cmd[0]} needs the admin role; uid {member_uid} has read\n"
        assert agent.call("status")["loop"]["paused"] is False

        code, out, err = agentctl_as(OTHER, "--socket", sock, "status")
        assert code == 4
        assert out == ""
        assert err.startswith(f"agentctl: permission denied: cannot connect to {sock}")

        # root (and the daemon's own user) is admin
        assert agent.ctl("pause").returncode == 0
        assert agent.ctl("resume").returncode == 0
        assert agent.stop() == 0
    assert "Traceback" not in agent.log()
