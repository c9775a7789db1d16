"""The built-in plugins keep OpenSSL's digests out of the daemon (issue #18): the policies'
idempotency keys are SHA-256 from CPython's own implementation, the same digest hashlib gives,
so keys made before this change still match; the command plugins' run token comes from
os.urandom, not the secrets module. tests/daemon/test_import_light.py checks the whole daemon."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import msgspec
import pytest

from agentd.plugins.builtin import _template
from agentd.plugins.builtin.threshold import ThresholdConfig


@pytest.mark.parametrize("data", [b"", b"abc", bytes(range(256)) * 40])
def test_sha256_hex_is_sha256(data: bytes) -> None:
    assert _template.sha256_hex(data) == hashlib.sha256(data).hexdigest()


def test_config_ident_is_unchanged() -> None:
    config = ThresholdConfig(metric="system.cpu.percent", above=90.0, actuator="log")
    # what config_ident computed with hashlib before: the keys in existing databases
    before = hashlib.sha256(msgspec.json.encode(config)).hexdigest()[:10]
    assert _template.config_ident(config) == before


def test_no_openssl_digest_or_secrets_is_imported() -> None:
    code = (
        "import json, sys\n"
        "from agentd.plugins.builtin import _template\n"
        "import agentd.plugins.builtin._proc\n"
        "_template.sha256_hex(b'x')\n"
        "print(json.dumps(sorted(m for m in ('hashlib', '_hashlib', 'secrets', 'hmac')"
        " if m in sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == []
