"""What the frozen daemon on the default config keeps out of its memory (issue #18), seen in
the mappings of the real child process: the extension modules that PyInstaller's runtime
hooks would load at every start (pyi_rth_multiprocessing: pickle; pyi_rth_inspect: zipfile,
with bz2 and lzma), and OpenSSL's digests (hashlib), which the policies' keys do without.
tests/daemon/test_import_light.py checks the module list of a daemon run from source."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentd.config import DEFAULT_CONFIG
from tests.packaging.test_frozen import _child_of
from tests.utils import AgentProcess

#: shared objects (by file name prefix) the child must not map
NEVER = ("_pickle.", "_multiprocessing.", "_bz2.", "_lzma.", "libbz2", "liblzma", "_hashlib.")


def _mapped(pid: int) -> set[str]:
    names = set()
    for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 6:
            names.add(Path(fields[5]).name)
    return names


@pytest.mark.slow
def test_the_frozen_default_daemon_maps_no_unneeded_library(
    frozen_dir: Path, frozen_env: dict[str, str], short_tmp: Path
) -> None:
    with AgentProcess(
        short_tmp, DEFAULT_CONFIG, env=frozen_env, argv=[str(frozen_dir / "agentd")]
    ) as agent:
        agent.wait_log(r"control socket listening", timeout=60)
        assert agent.proc is not None
        mapped = _mapped(_child_of(agent.proc.pid))
        assert agent.stop(30) == 0
    assert any(n.startswith("libpython3") for n in mapped)  # it is the Python child
    # the threshold policy's keys were made, with CPython's own SHA-256
    assert any(n.startswith("_sha256.") for n in mapped)
    assert sorted(n for n in mapped if n.startswith(NEVER)) == []
