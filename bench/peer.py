"""The peer a user would pick instead: CPU seconds and RSS over the same window for agentd and
Debian's collectd, both collecting CPU, memory, disk usage, network interfaces and load every
second, side by side in the same run.

agentd runs with the `system` sensor (plus `net` when that plugin exists), the store and the
control socket on; collectd (package collectd-core; installed by this bench with apt-get when
missing and run as root) with plugins cpu, memory, df, interface, load and unixsock, from its
own config file, stopped by PID. Both start together; CPU time and RSS are read with psutil
after a warm-up, over the same window, and so are the context switches of every thread of
each (``/proc/<pid>/task/*/status``): a fixed-interval daemon should wake about once a tick.
Target (issue #18): agentd's CPU <= 1.2x collectd's. The load average at the start is in the
notes: on a shared machine, compare ratios, not the percentages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

from bench.common import Figure, print_table, ratio_figure, start_agentd

COLLECTD = "/usr/sbin/collectd"
WARMUP = 5.0


def _ensure_collectd() -> str | None:
    if Path(COLLECTD).exists():
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "collectd is not installed (apt-get install collectd-core) and we are not root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "collectd-core"],
        check=False,
        env=env,
        capture_output=True,
        timeout=600,
    )
    return None if Path(COLLECTD).exists() else "apt-get install collectd-core failed"


def _collectd_conf(base: Path) -> Path:
    conf = base / "collectd.conf"
    conf.write_text(f"""\
Interval 1
FQDNLookup false
BaseDir "{base}"
PIDFile "{base}/collectd.pid"
PluginDir "/usr/lib/collectd"
LoadPlugin cpu
LoadPlugin memory
LoadPlugin df
LoadPlugin interface
LoadPlugin load
LoadPlugin unixsock
<Plugin df>
  MountPoint "/"
</Plugin>
<Plugin unixsock>
  SocketFile "{base}/collectd.sock"
</Plugin>
""")
    return conf


def _agentd_conf(base: Path) -> Path:
    from agentd.plugins.registry import default_registry

    net = default_registry(entry_points=False).find("net") is not None
    conf = base / "agentd.toml"
    conf.write_text(
        "[agent]\ninterval = 1.0\n[log]\nheartbeat = 0\n"
        '[sensors.system]\nmounts = { root = "/" }\ntemperatures = false\n'
        + ("[sensors.net]\n" if net else "")
    )
    return conf


def _switches(proc: psutil.Process) -> int:
    """Voluntary + involuntary context switches of every thread of the process tree."""
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            tasks = list(Path(f"/proc/{p.pid}/task").iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                text = (task / "status").read_text()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(("voluntary_ctxt", "nonvoluntary_ctxt")):
                    total += int(line.split()[1])
    return total


def _threads(proc: psutil.Process) -> int:
    return sum(p.num_threads() for p in [proc, *proc.children(recursive=True)])


def _tree_cpu_rss(proc: psutil.Process) -> tuple[float, int]:
    """CPU seconds (from ``schedstat``: nanoseconds, where ``cpu_times`` counts 10 ms ticks, too
    coarse for 0.1 % of a core over a minute) and RSS of the process tree."""
    procs = [proc, *proc.children(recursive=True)]
    cpu = 0.0
    rss = 0
    for p in procs:
        try:
            rss += p.memory_info().rss
            tasks = list(Path(f"/proc/{p.pid}/task").iterdir())
        except (psutil.NoSuchProcess, OSError):
            continue
        for task in tasks:
            try:
                cpu += int((task / "schedstat").read_text().split()[0]) / 1e9
            except (OSError, IndexError, ValueError):
                continue
    return cpu, rss


def run(quick: bool = False) -> list[Figure]:
    window = 20.0 if quick else 60.0
    problem = _ensure_collectd()
    if problem:
        return [Figure("CPU vs collectd", None, None, "%", "<= 1.2x", None, note=problem)]
    load = os.getloadavg()[0]
    base = Path(tempfile.mkdtemp(prefix="agpeer", dir="/tmp"))  # short: socket path limits
    procs: list[subprocess.Popen[bytes]] = []
    try:
        agentd = start_agentd(_agentd_conf(base), base)
        procs.append(agentd)
        collectd = subprocess.Popen(
            [COLLECTD, "-f", "-C", str(_collectd_conf(base))],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        procs.append(collectd)
        time.sleep(WARMUP)
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[0]} exited early with {p.returncode}")
        pa, pc = psutil.Process(agentd.pid), psutil.Process(collectd.pid)
        a0, _ = _tree_cpu_rss(pa)
        c0, _ = _tree_cpu_rss(pc)
        as0, cs0 = _switches(pa), _switches(pc)
        t0 = time.monotonic()
        time.sleep(window)
        a1, a_rss = _tree_cpu_rss(pa)
        c1, c_rss = _tree_cpu_rss(pc)
        as1, cs1 = _switches(pa), _switches(pc)
        elapsed = time.monotonic() - t0
        a_threads, c_threads = _threads(pa), _threads(pc)
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(base, ignore_errors=True)
    a_pct = (a1 - a0) / elapsed * 100
    c_pct = (c1 - c0) / elapsed * 100
    return [
        ratio_figure(
            f"idle CPU over {window:.0f}s at 1 s (% of a core)",
            a_pct,
            c_pct,
            "%",
            target="<= 1.2x collectd",
            max_ratio=1.2,
            note="baseline: collectd 5 (cpu, memory, df, interface, load, unixsock); "
            f"load average {load:.2f} at the start",
        ),
        ratio_figure(
            "context switches/s, idle at 1 s",
            (as1 - as0) / elapsed,
            (cs1 - cs0) / elapsed,
            "/s",
            target="reported",
            note=f"every thread: agentd {a_threads} threads, collectd {c_threads}",
        ),
        ratio_figure(
            "RSS at the end of the window", a_rss / 2**20, c_rss / 2**20, "MiB", target="reported"
        ),
    ]


def main() -> None:
    print_table(run())


if __name__ == "__main__":
    main()
