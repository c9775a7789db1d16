"""The deployed artifact's footprint: the one-file binary against the same agentd run from
source (``python -m agentd``) on the same machine, in the same run.

- size of the executable (one file: Python, the libraries and every built-in plugin);
- exec -> READY: from starting the process to ``READY=1`` on a notify socket we bind, as under
  systemd (the first tick ran and the control socket listens); median of several starts;
- **service memory** (issue #18): what the service costs the board in RAM, one figure next to
  its parts: the PSS of the whole process tree (the one-file bootloader and its Python child;
  the source run is one process) plus every byte it keeps on tmpfs that PSS does not already
  count: the unpacked bundle's unmapped bytes when ``$TMPDIR`` is on tmpfs, and the files in
  the runtime directory. The layout follows packaging/systemd/agentd.service: the runtime
  directory (``%t``) is tmpfs (here /dev/shm) and ``TMPDIR`` is wherever the unit puts it
  (``%S`` is the state directory, on disk). Read after the idle window (60 s after READY);
- idle CPU of that tree over the window, on the embedded default config (1 s ticks), with its
  threads and context switches per second (``/proc/<pid>/status``, every thread);
- the bundle the bootloader unpacks under $TMPDIR at each start, and where it lands.

``python -m bench.footprint [--binary PATH] [--quick]``; without --binary the production
spec is built first (into a temporary directory, ~20 s).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psutil

from bench.common import Figure, print_table, ratio_figure

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "packaging" / "pyinstaller.spec"


def build(out: Path) -> Path:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "PyInstaller",
            "--noconfirm",
            "--log-level=WARN",
            "--distpath",
            str(out / "dist"),
            "--workpath",
            str(out / "work"),
            str(SPEC),
        ],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    return out / "dist" / "agentd"


#: tmpfs for the runtime directory, as systemd's /run is (this machine's /run may be disk)
TMPFS = Path("/dev/shm")
UNIT = ROOT / "packaging" / "systemd" / "agentd.service"
MIB = 2**20


def unit_tmpdir() -> str:
    """Where the unit's ``Environment=TMPDIR=`` points: ``"%t"`` (runtime directory, tmpfs),
    ``"%S"`` (state directory, disk) or ``""`` (unset: the service's private /tmp)."""
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if line.startswith("Environment=") and "TMPDIR=" in line:
            value = line.split("TMPDIR=", 1)[1].strip().strip('"')
            return value[:2]
    return ""


def _is_tmpfs(path: Path) -> bool:
    best, fstype = "", ""
    for p in psutil.disk_partitions(all=True):
        if str(path).startswith(p.mountpoint) and len(p.mountpoint) > len(best):
            best, fstype = p.mountpoint, p.fstype
    return fstype == "tmpfs"


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


class _Run:
    """One agentd under a fake NOTIFY_SOCKET, laid out as the unit does: the runtime directory
    on tmpfs, the state directory on disk, ``TMPDIR`` where the unit puts it."""

    def __init__(self, argv: list[str], base: Path, config: Path, tmpfs: Path) -> None:
        self.base = base
        self.state = base / "state"
        self.run = tmpfs / "run"
        self.run.mkdir()
        self.notify = base / "notify"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.notify))
        where = unit_tmpdir()
        self.tmp = {"%t": self.run, "%S": self.state / "unpack"}.get(where, base / "tmp")
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("NOTIFY_", "WATCHDOG_", "LISTEN_", "OTEL_", "JOURNAL_"))
        }
        env.update(NOTIFY_SOCKET=str(self.notify), TMPDIR=str(self.tmp))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [
                *argv,
                "run",
                "--config",
                str(config),
                "--state-dir",
                str(self.state),
                "--runtime-dir",
                str(self.run),
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout: float = 60.0) -> float:
        self.sock.settimeout(timeout)
        while True:
            data = self.sock.recv(4096)
            if b"READY=1" in data.split(b"\n"):
                return time.monotonic() - self.started

    def tree(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu(self) -> float:
        return sum(sum(p.cpu_times()[:2]) for p in self.tree())

    def switches(self) -> int:
        """Context switches of every thread of the tree (voluntary + involuntary)."""
        total = 0
        for p in self.tree():
            for task in Path(f"/proc/{p.pid}/task").iterdir():
                with contextlib.suppress(OSError):
                    for line in (task / "status").read_text().splitlines():
                        if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                            total += int(line.split()[1])
        return total

    def memory(self) -> dict[str, float]:
        """PSS per process, and the bytes on tmpfs that PSS does not count (bytes)."""
        procs = self.tree()
        pss = [p.memory_full_info().pss for p in procs]
        # resident pages of files under the unpack directory that the tree maps: on tmpfs
        # they are in PSS already; the rest of the bundle sits in RAM unseen
        mapped: dict[str, int] = {}
        prefix = str(self.tmp) + "/"
        for p in procs:
            for m in p.memory_maps(grouped=True):
                if m.path.startswith(prefix):
                    mapped[m.path] = max(mapped.get(m.path, 0), m.rss)
        unpacked = _dir_bytes(self.tmp)
        # the runtime directory's own files (socket, lock), without a bundle unpacked in it
        runtime = _dir_bytes(self.run) - (unpacked if self.tmp == self.run else 0)
        on_tmpfs = _is_tmpfs(self.tmp)
        unmapped = 0
        if on_tmpfs:
            for f in self.tmp.rglob("*"):
                if f.is_file() and not f.is_symlink():
                    unmapped += max(0, f.stat().st_size - mapped.get(str(f), 0))
        return {
            "pss": float(sum(pss)),
            "pss_boot": float(pss[0]) if len(pss) > 1 else 0.0,
            "pss_python": float(pss[-1]),
            "unpacked": float(unpacked),
            "unpacked_tmpfs": 1.0 if on_tmpfs else 0.0,
            "unmapped_tmpfs": float(unmapped),
            "runtime_tmpfs": float(max(0, runtime)),
            "threads": float(sum(p.num_threads() for p in procs)),
            "processes": float(len(procs)),
        }

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.sock.close()


def service_memory(m: dict[str, float]) -> float:
    """The one figure: PSS of the tree + what the service keeps on tmpfs outside PSS."""
    return m["pss"] + m["unmapped_tmpfs"] + m["runtime_tmpfs"]


@contextlib.contextmanager
def _dirs() -> Iterator[tuple[Path, Path]]:
    with (
        tempfile.TemporaryDirectory(prefix="agfp", dir="/tmp") as d,
        tempfile.TemporaryDirectory(prefix="agfp", dir=TMPFS if TMPFS.is_dir() else "/tmp") as t,
    ):
        yield Path(d), Path(t)


def _ready(argv: list[str], config: Path, starts: int) -> float:
    """Median exec -> READY=1 over ``starts`` fresh starts."""
    ready: list[float] = []
    for _ in range(starts):
        with _dirs() as (d, t):
            run = _Run(argv, d, config, t)
            try:
                ready.append(run.wait_ready())
            finally:
                run.stop()
    return statistics.median(ready)


def _idle(argvs: list[list[str]], config: Path, window: float) -> list[dict[str, float]]:
    """Memory, idle CPU and context switches of each command, all running side by side over
    the same window (they are idle: they do not compete, and the window is shared). Memory
    is read at the end of the window."""
    with contextlib.ExitStack() as stack:
        runs = []
        for argv in argvs:
            d, t = stack.enter_context(_dirs())
            run = _Run(argv, d, config, t)
            stack.callback(run.stop)
            run.wait_ready()
            runs.append(run)
        time.sleep(3.0)  # settle after the first ticks
        c0, s0, t0 = [r.cpu() for r in runs], [r.switches() for r in runs], time.monotonic()
        time.sleep(window)
        elapsed = time.monotonic() - t0
        out = []
        for r, c, s in zip(runs, c0, s0, strict=True):
            o = r.memory()
            o["cpu"] = (r.cpu() - c) / elapsed * 100
            o["switches"] = (r.switches() - s) / elapsed
            out.append(o)
    return out


def run(quick: bool = False, binary: Path | None = None) -> list[Figure]:
    starts, window = (3, 5.0) if quick else (5, 57.0)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="agfpb") as build_dir:
        if binary is None:
            binary = build(Path(build_dir))
        config = Path(build_dir) / "agentd.toml"
        config.write_text(
            subprocess.run(
                [str(binary), "print-default-config"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        size = binary.stat().st_size / 1e6
        argvs = [[str(binary)], [sys.executable, "-m", "agentd"]]
        frozen, source = _idle(argvs, config, window)
        frozen["ready"] = _ready(argvs[0], config, starts)
        source["ready"] = _ready(argvs[1], config, starts)
    where = {"%t": "runtime directory (tmpfs)", "%S": "state directory (disk)"}.get(
        unit_tmpdir(), "private /tmp"
    )
    load_note = f"load average {load:.2f} at the start"
    fm, sm = service_memory(frozen) / MIB, service_memory(source) / MIB
    figures = [
        Figure(
            "artifact size (one file)",
            size,
            None,
            "MB",
            "<= 20 MB",
            size <= 20.0,
            note=f"{binary.name}, stripped, every built-in plugin",
        ),
        ratio_figure(
            "exec -> READY=1 (frozen vs source)",
            frozen["ready"] * 1e3,
            source["ready"] * 1e3,
            "ms",
            target="<= 1 s",
            note=f"median of {starts} starts; READY follows the first tick; {load_note}",
        ),
        ratio_figure(
            "service memory: PSS + tmpfs (frozen vs source)",
            fm,
            sm,
            "MiB",
            target="<= 30 MiB",
            note=(
                f"after {window + 3:g} s on the default config; frozen = PSS "
                f"{frozen['pss'] / MIB:.1f} (bootloader {frozen['pss_boot'] / MIB:.1f} + python "
                f"{frozen['pss_python'] / MIB:.1f}) + unpacked bundle on tmpfs, unmapped "
                f"{frozen['unmapped_tmpfs'] / MIB:.1f} + runtime files "
                f"{frozen['runtime_tmpfs'] / MIB:.2f}; source = PSS {source['pss'] / MIB:.1f} "
                f"(libpython shared with other Pythons here, so lower than on a board); "
                f"{load_note}"
            ),
        ),
        ratio_figure(
            "PSS of the process tree (frozen vs source)",
            frozen["pss"] / MIB,
            source["pss"] / MIB,
            "MiB",
            target="reported",
            note=f"frozen: bootloader + child ({frozen['processes']:.0f} processes)",
        ),
        ratio_figure(
            "idle CPU, 1 s ticks (frozen vs source)",
            frozen["cpu"],
            source["cpu"],
            "% of a core",
            target="<= 0.5 % of a core",
            note=f"over {window:g} s; {load_note}",
        ),
        ratio_figure(
            "context switches/s, idle (frozen vs source)",
            frozen["switches"],
            source["switches"],
            "/s",
            target="reported",
            note=f"every thread of the tree; threads: frozen {frozen['threads']:.0f}, "
            f"source {source['threads']:.0f}",
        ),
        Figure(
            "bundle unpacked per start ($TMPDIR)",
            frozen["unpacked"] / MIB,
            None,
            "MiB",
            "-",
            None,
            note=f"under the unit: {where}"
            + (": counts toward its memory" if frozen["unpacked_tmpfs"] else ": page cache"),
        ),
    ]
    # absolute targets (issues #9, #18); the source run is shown beside them for scale
    limits = {"exec -> READY": 1000.0, "service memory": 30.0, "idle CPU": 0.5}
    for f in figures:
        for prefix, limit in limits.items():
            if f.figure.startswith(prefix) and f.agentd is not None:
                f.ok = f.agentd <= limit
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.footprint")
    parser.add_argument("--binary", type=Path, help="a built agentd (default: build one)")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print_table(run(quick=args.quick, binary=args.binary))


if __name__ == "__main__":
    main()
