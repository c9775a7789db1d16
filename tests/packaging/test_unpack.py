"""Where the one-file binary unpacks under the unit (issue #18): in the state directory, on
disk, not on the runtime directory's tmpfs, where the whole bundle would sit in RAM; and a
bundle left behind by a SIGKILLed bootloader is removed before the next start by the unit's
own ExecStartPre, run here as written."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from tests.packaging.test_units import SERVICE, settings
from tests.utils import AgentProcess, wait_for

CONFIG = "[agent]\ninterval = 0.2\n[log]\nheartbeat = 0\n[sensors.system]\ncpu = false\n"


def _unit_tmpdir() -> str:
    (env,) = settings(SERVICE)["Environment"]
    key, _, value = env.partition("=")
    assert key == "TMPDIR"
    return value


def test_the_unit_unpacks_into_its_state_directory_not_tmpfs() -> None:
    s = settings(SERVICE)
    tmpdir = _unit_tmpdir()
    # %t is the runtime directory (/run: tmpfs); %S/agentd the state directory (disk)
    assert not tmpdir.startswith("%t")
    assert tmpdir.startswith("%S/agentd/")
    # systemd creates it (a missing $TMPDIR makes the bootloader fall back to /tmp)
    (dirs,) = s["StateDirectory"]
    assert tmpdir.removeprefix("%S/") in dirs.split()
    # and empties it before each start: nothing else removes a SIGKILLed bootloader's bundle
    (pre,) = s["ExecStartPre"]
    argv = shlex.split(pre)
    assert argv[1] == tmpdir
    assert argv[2:] == ["-mindepth", "1", "-delete"]


def _child_of(pid: int) -> int | None:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(kids[0]) if kids else None


def test_a_stale_bundle_is_removed_and_the_new_one_lands_on_disk(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    # %S/agentd is AgentProcess's state directory
    var_lib = short_tmp / "lib"
    var_lib.mkdir()
    (short_tmp / "state").mkdir()
    (var_lib / "agentd").symlink_to(short_tmp / "state")
    unpack = Path(_unit_tmpdir().replace("%S", str(var_lib)))
    stale = unpack / "_MEIstale00" / "lib-dynload" / "x.so"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"\0" * 4096)
    (short_tmp / "state" / "agentd.db-keep").write_text("not touched")

    (pre,) = settings(SERVICE)["ExecStartPre"]
    subprocess.run(shlex.split(pre.replace("%S", str(var_lib))), check=True, timeout=30)
    assert unpack.is_dir()
    assert list(unpack.iterdir()) == []
    assert (short_tmp / "state" / "agentd.db-keep").read_text() == "not touched"

    env = {**frozen_env, "TMPDIR": str(unpack)}
    with AgentProcess(short_tmp, CONFIG, env=env, argv=[str(frozen_dir / "agentd")]) as agent:
        agent.wait_log(r"tick 1:", timeout=60)
        pid = agent.pid
        child = wait_for(lambda: _child_of(pid), 20, what="the one-file child")
        (bundle,) = [p for p in unpack.iterdir() if p.name.startswith("_MEI")]
        maps = Path(f"/proc/{child}/maps").read_text()
        real = str(bundle.resolve())
        assert any(
            line.endswith(".so.1.0") and real in line and "libpython" in line
            for line in maps.splitlines()
        ), "libpython is not mapped from the unpacked bundle in the state directory"
        assert not list(agent.runtime_dir.rglob("_MEI*"))
        assert agent.stop() == 0
    assert [p.name for p in unpack.iterdir()] == []  # the bootloader removed its bundle
