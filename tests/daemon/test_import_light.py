"""What a daemon on the default config never imports (issue #18: every module loaded stays in
its memory for as long as it runs). A real ``agentd run`` in a subprocess, with the embedded
default config, past READY=1, a few ticks and an ``agentctl status``; then its sys.modules.

Each entry says who would load it and where it is kept out; a failure names the module and
the import chain to look at (``python -X importtime -m agentd run``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from agentd.config import DEFAULT_CONFIG
from tests.utils import short_tmpdir

#: module (or package prefix, ending in ".") -> what would import it, and what keeps it out
NEVER = {
    "opentelemetry.": "agentd.telemetry.spans and logs.TraceIdFilter: only with a tracer",
    "importlib.metadata": "agentd.plugins.registry: only when a distribution declares plugins",
    "agentd.uplink.engine": "agentd/uplink/__init__.py: its names load when first used",
    "agentd.uplink.batcher": "agentd/uplink/__init__.py (the engine's)",
    "agentd.uplink.cmdproto": "agentd/uplink/__init__.py (the engine's, with hmac)",
    "agentd.uplink.rollout": "agentd/uplink/__init__.py (the engine's, with hashlib)",
    "hashlib": "builtin._template.sha256_hex: CPython's _sha256, not OpenSSL's digests",
    "_hashlib": "the same",
    "hmac": "the uplink's command protocol only",
    "secrets": "builtin._proc: os.urandom for its run token",
    "shutil": "argparse's terminal width: cli/agentd.py's _Formatter reads it with os",
    "bz2": "shutil's",
    "lzma": "shutil's",
    "difflib": "config_refs.did_you_mean: only for a config with a mistake",
    "multiprocessing": "nothing (the frozen spec excludes it with its runtime hook)",
    # built-ins the default config does not use: the registry imports a plugin's module when
    # a config names it (agentd/plugins/builtin/__init__.py's TABLE)
    "agentd.plugins.builtin.modbus": "the registry: only for a modbus instance",
    "agentd.plugins.builtin.mqtt_device": "the registry: only for an mqtt sensor or actuator",
    "agentd.plugins.builtin.openapi": "the registry: only for an openapi actuator",
    "agentd.plugins.builtin.webhook": "the registry: only for a webhook actuator",
    "agentd.plugins.builtin.exec_actuator": "the registry: only for an exec actuator",
    "agentd.plugins.builtin.mqtt": "the registry: only for an uplink",
    "agentd.devices.": "the device plugins' modules, only when one is configured",
    "agentd.uplink.config": "the mqtt plugins' config, only when one is configured",
}

CODE = """
import json, os, socket, subprocess, sys, threading, time

notify, state, run, config, out = sys.argv[1:6]
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(notify)
os.environ["NOTIFY_SOCKET"] = notify

def watch():
    sock.settimeout(60)
    while b"READY=1" not in sock.recv(4096).split(b"\\n"):
        pass
    time.sleep(2.5)  # ticks, the first group commit
    status = subprocess.run(
        [sys.executable, "-m", "agentd", "ctl", "--socket", os.path.join(run, "agentd.sock"),
         "status"], capture_output=True, text=True, timeout=60,
    )
    with open(out, "w") as f:
        json.dump({"status": status.returncode, "modules": sorted(sys.modules)}, f)
    os.kill(os.getpid(), 15)

threading.Thread(target=watch, daemon=True).start()
from agentd.cli.main import main
sys.exit(main(["run", "--config", config, "--state-dir", state, "--runtime-dir", run]))
"""


def test_the_default_daemon_leaves_out_what_it_does_not_use(tmp_path: Path) -> None:
    config = tmp_path / "agentd.toml"
    config.write_text(DEFAULT_CONFIG)
    out = tmp_path / "modules.json"
    with short_tmpdir() as short:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                CODE,
                str(short / "notify"),
                str(tmp_path / "state"),
                str(short / "run"),
                str(config),
                str(out),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(out.read_text())
    assert got["status"] == 0  # the daemon answered: it was really running
    modules = set(got["modules"])
    assert "agentd.loop" in modules
    assert "agentd.store.store" in modules
    loaded = {
        name: why
        for name, why in NEVER.items()
        if (any(m.startswith(name) for m in modules) if name.endswith(".") else name in modules)
    }
    assert loaded == {}
