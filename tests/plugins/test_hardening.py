"""Issue 13, the plugin side: each test reproduces an attack or a broken device as the issue
describes it, against real subprocesses, real FIFOs, sockets and symlinks, a real HTTP server
and a real `agentd check-config`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agentd.actions import ActionRunner
from agentd.config import ActuatorCommon, ActuatorInstance
from agentd.model import Action, Observation
from agentd.plugins.builtin import _template, exec_actuator, file_actuator, file_sensor
from agentd.plugins.handle import ActuatorRunner, build_handle

PY = sys.executable


def actuator(module, name: str = "a", **raw: Any) -> tuple[ActionRunner, ActuatorRunner]:  # type: ignore[no-untyped-def]
    common_keys = set(ActuatorCommon.__struct_fields__)
    common = msgspec.convert({k: v for k, v in raw.items() if k in common_keys}, ActuatorCommon)
    own = {k: v for k, v in raw.items() if k not in common_keys}
    inst = ActuatorInstance(
        name=name,
        plugin=module.SPEC.name,
        common=common,
        config=msgspec.convert(own, module.SPEC.config_type),
        raw=raw,
    )
    h = build_handle(ActuatorRunner, inst, module.SPEC)
    assert isinstance(h, ActuatorRunner)
    return ActionRunner({name: h}, 10.0), h


# -- 1. exec placeholders ----------------------------------------------------------------------
@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "reading.txt").write_text("inside\n")
    (tmp_path / "shadow").write_text("root:secret-hash\n")
    return data


@pytest.mark.parametrize(
    "name",
    [
        "../shadow",
        "../../../../etc/shadow",
        "sub/../../shadow",
        "..",
        "/etc/shadow",
    ],
)
async def test_exec_placeholder_in_a_path_cannot_escape_it(data_dir: Path, name: str) -> None:
    r, _ = actuator(exec_actuator, commands={"show": ["/bin/cat", f"{data_dir}/{{name}}"]})
    res = await r.run(Action(actuator="a", name="show", params={"name": name}))
    assert res.status == "rejected", res
    assert "secret-hash" not in str(res.output)
    assert str(res.error).startswith("actuator 'a': show.params.name: ")


async def test_exec_path_rules_hold_even_with_a_wide_param_pattern(data_dir: Path) -> None:
    r, _ = actuator(
        exec_actuator,
        commands={
            "show": ["/bin/cat", f"{data_dir}/{{name}}"],
            "two": ["/bin/cat", f"{data_dir}/{{a}}{{b}}/shadow"],
        },
        param_pattern=r"[^\n]*",
    )
    esc = await r.run(Action(actuator="a", name="show", params={"name": "x/../../shadow"}))
    assert esc.status == "rejected"
    assert esc.error == (
        "actuator 'a': show.params.name: 'x/../../shadow' would leave the path "
        "(no '..' segment or absolute value inside a path)"
    )
    # two placeholders that make a '..' segment only together
    joined = await r.run(Action(actuator="a", name="two", params={"a": ".", "b": "."}))
    assert joined.status == "rejected", joined
    sub = await r.run(Action(actuator="a", name="show", params={"name": "reading.txt"}))
    assert (sub.status, sub.output["stdout"]) == ("ok", "inside\n")


async def test_exec_default_pattern_is_one_path_segment(data_dir: Path) -> None:
    (data_dir / "sub").mkdir()
    (data_dir / "sub" / "f").write_text("deeper\n")
    r, _ = actuator(exec_actuator, commands={"show": ["/bin/cat", f"{data_dir}/{{name}}"]})
    ok = await r.run(Action(actuator="a", name="show", params={"name": "reading.txt"}))
    assert (ok.status, ok.output["stdout"]) == ("ok", "inside\n"), ok.error
    deeper = await r.run(Action(actuator="a", name="show", params={"name": "sub/f"}))
    assert deeper.status == "rejected"
    assert "does not match param_pattern" in str(deeper.error)


async def test_exec_pattern_applies_to_the_value_not_the_filled_argument() -> None:
    r, _ = actuator(
        exec_actuator,
        commands={"count": [PY, "-c", "import sys; print(sys.argv[1:])", "--count={n}", "{n}"]},
    )
    ok = await r.run(Action(actuator="a", name="count", params={"n": 5}))
    assert ok.status == "ok", ok.error
    assert ok.output["stdout"] == "['--count=5', '5']\n"
    # a value still can never turn an argument into an option
    opt = await r.run(Action(actuator="a", name="count", params={"n": "-rf"}))
    assert opt.status == "rejected"
    huge = await r.run(Action(actuator="a", name="count", params={"n": "9" * 5000}))
    assert huge.status == "rejected"
    assert "longer than 4096 characters" in str(huge.error)


# -- 2. template widths ------------------------------------------------------------------------
def test_check_config_refuses_an_absurd_format_width(tmp_path: Path) -> None:
    conf = tmp_path / "agentd.toml"
    conf.write_text(
        "[sensors.system]\n\n"
        "[policies.spam]\n"
        'plugin = "rules"\n'
        'conditions = [{ metric = "system.cpu_percent", op = ">=", value = 0.0 }]\n'
        'actuator = "log"\naction = "log"\n'
        'params = { message = "x {tick:>100000000} y" }\n\n'
        "[actuators.log]\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "agentd", "check-config", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "policies.spam" in lines[0]
    assert "params.message" in lines[0]
    assert "width 100000000 is over the maximum 256" in lines[0]


@pytest.mark.parametrize(
    "spec", [">100000000", "0>300", ",.200f", ".100000s", "^257", "x<99999999999999999999"]
)
def test_template_refuses_wide_or_long_specs(spec: str) -> None:
    with pytest.raises(ValueError, match="maximum"):
        _template.check_template({"m": f"x {{tick:{spec}}} y"})
    with pytest.raises(ValueError, match=r"params\.m\[0\]\.deep"):
        _template.check_template({"m": [{"deep": f"{{tick:{spec}}}"}]})


def test_rendered_values_are_bounded_at_run_time() -> None:
    big = "z" * 1_000_000
    obs = Observation(tick=1, monotonic=1.0, wall=1.0, readings={"s": {"line": big}})
    out = _template.render(
        {"alone": "{s.line}", "text": "a {s.line} b {s.line:>200}", "n": "{tick:>10}"},
        obs,
        {"tick": 1},
    )
    assert len(out["alone"]) == _template.MAX_TEXT
    assert out["alone"].endswith("…")
    assert len(out["text"]) <= _template.MAX_TEXT
    assert out["text"].startswith("a " + "z" * 100)
    assert out["n"] == "         1"


# -- 3. exec commands that daemonize -----------------------------------------------------------
def _procs_with(arg: str) -> list[int]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if arg.encode() in cmd and state != "Z":
            found.append(int(pid))
    return found


def _zombie_children() -> set[int]:
    """Zombies whose parent is this process (compare with a snapshot: once the subreaper is
    set, earlier tests' daemons that died leave their orphans here too)."""
    me = os.getpid()
    out = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] == "Z" and int(fields[1]) == me:
            out.add(int(pid))
    return out


async def test_exec_that_daemonizes_is_reaped_and_leaks_nothing() -> None:
    secs = f"61.{uuid.uuid4().int % 10**6}"  # a unique argv to find the stray by
    zombies = _zombie_children()
    r, _ = actuator(
        exec_actuator,
        commands={
            "bg": ["/bin/sh", "-c", f"echo started; setsid sleep {secs} & echo done"],
            "quiet": ["/bin/sh", "-c", f"setsid sleep {secs} >/dev/null 2>&1 </dev/null &"],
            "tree": ["/bin/sh", "-c", f"(sleep {secs} & sleep {secs}) & echo tree"],
        },
        run_timeout=20.0,
    )
    first = await r.run(Action(actuator="a", name="bg"))
    assert first.status == "ok", first.error
    assert first.output["stdout"] == "started\ndone\n"
    assert first.output["returncode"] == 0
    assert first.output["strays_killed"] >= 1
    assert _procs_with(secs) == []
    before = len(os.listdir("/proc/self/fd"))
    for name in ["bg", "quiet", "tree"] * 4:
        res = await r.run(Action(actuator="a", name=name))
        assert res.status == "ok", (name, res.error)
        assert res.output["strays_killed"] >= 1, name
        assert _procs_with(secs) == [], name
    assert len(os.listdir("/proc/self/fd")) <= before
    assert _zombie_children() - zombies == set()


async def test_a_runs_stray_sweep_leaves_a_concurrent_run_alone() -> None:
    """Run B's background job (its own session, adopted by us as soon as its subshell exits) is
    B's: A's sweep, which runs while B is still going, must not touch it. It exits on its own
    before B ends, a zombie whose environment can no longer be read: still reaped."""
    secs = f"64.{uuid.uuid4().int % 10**6}"
    zombies = _zombie_children()
    r, _ = actuator(
        exec_actuator,
        commands={
            "a": ["/bin/sh", "-c", f"setsid sleep {secs} &"],
            "b": [
                "/bin/sh",
                "-c",
                "(setsid sh -c 'sleep 0.6; echo b-child' &); sleep 1.2; echo b-parent",
            ],
        },
    )
    b = asyncio.ensure_future(r.run(Action(actuator="a", name="b")))
    await asyncio.sleep(0.2)
    a = await r.run(Action(actuator="a", name="a"))
    assert (a.status, a.output["strays_killed"]) == ("ok", 1), a.error
    res = await b
    assert res.status == "ok", res.error
    # B's orphan lived through A's sweep and printed into B's output
    assert res.output["stdout"] == "b-child\nb-parent\n"
    assert res.output["strays_killed"] == 0
    assert _procs_with(secs) == []
    assert _zombie_children() - zombies == set()


async def test_exec_timeout_kills_strays_in_other_sessions() -> None:
    secs = f"62.{uuid.uuid4().int % 10**6}"
    zombies = _zombie_children()
    r, _ = actuator(
        exec_actuator,
        commands={"hang": ["/bin/sh", "-c", f"setsid sleep {secs} & sleep {secs}"]},
        run_timeout=0.5,
    )
    res = await r.run(Action(actuator="a", name="hang"))
    assert res.status == "timeout"
    assert _procs_with(secs) == []
    assert _zombie_children() - zombies == set()


# -- 4. FIFOs, sockets and symlinks where a file is expected ------------------------------------
@contextlib.contextmanager
def unblocking(fifo: Path, flags: int) -> Iterator[None]:
    """On the way out, open the other end of ``fifo`` so a thread stuck opening it (today's
    bug) returns and the test process can exit."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, flags | os.O_NONBLOCK))


async def test_file_sensor_refuses_a_fifo_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "temp"
    fifo.write_text("1\n")
    s = file_sensor.SPEC.factory(msgspec.convert({"path": str(fifo)}, file_sensor.FileSensorConfig))
    await s.start()
    fifo.unlink()
    os.mkfifo(fifo)  # the device node became a FIFO (a hung bus looks the same)
    with unblocking(fifo, os.O_WRONLY):
        with pytest.raises(OSError, match="is a FIFO, not a regular file"):
            await asyncio.wait_for(s.perceive(), 2.0)
        with pytest.raises(OSError, match="is a FIFO, not a regular file"):
            await asyncio.wait_for(s.start(), 2.0)


async def test_file_sensor_refuses_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen()
    try:
        s = file_sensor.SPEC.factory(
            msgspec.convert({"path": str(path)}, file_sensor.FileSensorConfig)
        )
        with pytest.raises(OSError, match="socket"):
            await asyncio.wait_for(s.perceive(), 2.0)
    finally:
        srv.close()


@pytest.fixture
async def fifo_target(tmp_path: Path) -> AsyncIterator[Path]:
    fifo = tmp_path / "value"
    os.mkfifo(fifo)
    with unblocking(fifo, os.O_RDONLY):
        yield fifo


async def test_file_actuator_refuses_a_fifo_without_blocking(fifo_target: Path) -> None:
    r, h = actuator(file_actuator, targets={"gpio": str(fifo_target)}, timeout=2.0)
    res = await r.run(Action(actuator="a", name="write", params={"target": "gpio", "value": 1}))
    assert res.status == "failed", res
    assert "is a FIFO, not a regular file" in str(res.error)
    # a reader on the other end does not make it a file either
    reader = os.open(fifo_target, os.O_RDONLY | os.O_NONBLOCK)
    try:
        again = await r.run(
            Action(actuator="a", name="write", params={"target": "gpio", "value": 1})
        )
        assert "is a FIFO, not a regular file" in str(again.error)
        assert os.read(reader, 10) == b""  # nothing was written into it
    finally:
        os.close(reader)
    with pytest.raises(OSError, match="is a FIFO, not a regular file"):
        await h.start()


async def test_file_actuator_does_not_follow_a_symlinked_directory(tmp_path: Path) -> None:
    real = tmp_path / "devices" / "led0"
    real.mkdir(parents=True)
    (real / "brightness").write_text("0\n")
    leds = tmp_path / "leds"
    leds.mkdir()
    (leds / "led0").symlink_to(real)  # sysfs style: resolved once, at start
    elsewhere = tmp_path / "victim"
    elsewhere.mkdir()
    (elsewhere / "brightness").write_text("precious\n")
    r, h = actuator(file_actuator, targets={"led": str(leds / "led0" / "brightness")})
    await h.start()
    ok = await r.run(Action(actuator="a", name="write", params={"target": "led", "value": 1}))
    assert ok.status == "ok", ok.error
    assert (real / "brightness").read_text() == "1\n"
    # someone swaps a directory on the resolved path for a symlink to another place
    moved = tmp_path / "devices" / "moved"
    (tmp_path / "devices" / "led0").rename(moved)
    (tmp_path / "devices" / "led0").symlink_to(elsewhere)
    res = await r.run(Action(actuator="a", name="write", params={"target": "led", "value": 7}))
    assert res.status == "failed"
    assert "symlink" in str(res.error)
    assert (elsewhere / "brightness").read_text() == "precious\n"


async def test_file_actuator_does_not_follow_a_symlinked_directory_before_start(
    tmp_path: Path,
) -> None:
    """Without start() (resolved lazily at the first write) the same holds afterwards."""
    real = tmp_path / "real"
    real.mkdir()
    (real / "v").write_text("0\n")
    r, _ = actuator(file_actuator, targets={"v": str(real / "v")})
    assert (
        await r.run(Action(actuator="a", name="write", params={"target": "v", "value": 1}))
    ).status == "ok"
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "v").write_text("precious\n")
    real.rename(tmp_path / "gone")
    real.symlink_to(victim)
    res = await r.run(Action(actuator="a", name="write", params={"target": "v", "value": 2}))
    assert res.status == "failed"
    assert (victim / "v").read_text() == "precious\n"
