"""The cross-builders agree: the container build context leaves out what git ignores, the CA
secret of a container build is used and then gone, the artifact's archive is read right
(cross-build/manifest.py against PyInstaller's own writer), and, marked ``arm64`` (run by
`.ci/run` after both builds), the rootfs and podman artifacts bundle the same package versions
and neither carries the build machine's CA certificates.

``AGENTD_ARM64_PODMAN_ARTIFACT`` names the podman builder's artifact (default
dist/podman/agentd-linux-arm64); when it is set, the file must exist.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.cross.test_verify import ARTIFACT, REPO

CROSS = REPO / "cross-build"
WITH_CA = CROSS / "with-ca.sh"
PODMAN_ENV = "AGENTD_ARM64_PODMAN_ARTIFACT"
PODMAN_ARTIFACT = Path(os.environ.get(PODMAN_ENV, REPO / "dist" / "podman" / "agentd-linux-arm64"))
LOCAL_CAS = sorted(Path("/usr/local/share/ca-certificates").glob("**/*.crt"))


def load_manifest() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cross_manifest", CROSS / "manifest.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


manifest = load_manifest()


def make_pem(tmp_path: Path, name: str) -> Path:
    """A real self-signed certificate (openssl), as a proxy's CA would be."""
    key, pem = tmp_path / f"{name}.key", tmp_path / f"{name}.crt"
    command = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    subprocess.run(
        [*command, "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(pem)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return pem


# --- the build context ---------------------------------------------------------------------------


def test_dockerignore_leaves_out_everything_git_ignores() -> None:
    ignore = {
        line.strip()
        for line in (CROSS / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert ".git" in ignore
    for line in (REPO / ".gitignore").read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        bare = pattern.rstrip("/")
        if "/" in bare:  # anchored in git too
            assert bare in ignore, f".gitignore {pattern!r} is not in Dockerfile.dockerignore"
        else:  # git matches it at any depth; a .dockerignore pattern only where it is written
            assert f"**/{bare}" in ignore, (
                f".gitignore {pattern!r} needs '**/{bare}' in Dockerfile.dockerignore"
            )


# --- the CA secret -------------------------------------------------------------------------------


def test_with_ca_trusts_the_secret_for_the_step_only(tmp_path: Path) -> None:
    pem = make_pem(tmp_path, "proxy-ca")
    seen = tmp_path / "seen"
    script = f'cp "$PIP_CERT" {seen}; echo "$PIP_CERT"; [ "$SSL_CERT_FILE" = "$PIP_CERT" ]'
    proc = subprocess.run(
        ["sh", str(WITH_CA), "sh", "-c", script],
        env={**os.environ, "AGENTD_CA_SECRET": str(pem)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    bundle = Path(proc.stdout.strip())
    assert pem.read_text().strip() in seen.read_text()
    assert not bundle.exists(), "the bundle made from the secret outlived the step"
    assert "trusting 1 extra CA certificate(s)" in proc.stderr


def test_with_ca_passes_a_failure_through_with_a_hint(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["sh", str(WITH_CA), "sh", "-c", "exit 3"],
        env={**os.environ, "AGENTD_CA_SECRET": str(tmp_path / "absent")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 3
    assert "--secret id=extra_ca,src=" in proc.stderr


# --- reading the archive -------------------------------------------------------------------------


def test_manifest_reads_pyinstallers_archive_and_finds_a_certificate(tmp_path: Path) -> None:
    writers = pytest.importorskip("PyInstaller.archive.writers")
    pem, other = make_pem(tmp_path, "bundled"), make_pem(tmp_path, "elsewhere")
    lib = tmp_path / "libfake.so.1"
    lib.write_bytes(b"\x7fELF fake library")
    archive = tmp_path / "agentd"
    entries = [("libfake.so.1", str(lib), True, "b"), ("certs/ca.pem", str(pem), True, "x")]
    writers.CArchiveWriter(str(archive), entries, "libpython3.11.so.1.0")
    data = archive.read_bytes()
    names = {name: code for name, code, *_ in manifest.read_toc(data)[1]}
    assert names == {"libfake.so.1": "b", "certs/ca.pem": "x"}
    assert {n: blob for n, _c, blob in manifest.members(data)}["libfake.so.1"] == lib.read_bytes()
    # compressed in the archive: a plain byte search would not find it
    assert pem.read_bytes()[40:100] not in data
    assert manifest.contains_certificates(data, [str(pem)]) == [f"{pem}#0"]
    assert manifest.contains_certificates(data, [str(other)]) == []


# --- the two arm64 artifacts (after .ci/run's builds) --------------------------------------------


def read_packages(artifact: Path) -> list[str]:
    path = artifact.with_name(artifact.name + ".packages")
    if not path.is_file():
        pytest.fail(f"{path} is missing: every builder writes it beside the artifact")
    return [line for line in path.read_text().splitlines() if line and not line.startswith("#")]


@pytest.fixture(scope="module")
def podman_artifact() -> Path:
    if not PODMAN_ARTIFACT.is_file():
        if PODMAN_ENV in os.environ:
            pytest.fail(f"{PODMAN_ARTIFACT} ({PODMAN_ENV}) is missing")
        pytest.skip(
            f"no {PODMAN_ARTIFACT}: `cross-build/build.sh arm64 --builder podman --out dist/podman`"
        )
    return PODMAN_ARTIFACT


@pytest.mark.arm64
def test_both_builders_bundle_the_same_packages(podman_artifact: Path) -> None:
    if not ARTIFACT.is_file():
        pytest.fail(
            f"{ARTIFACT} is missing: build it with `cross-build/build.sh arm64 --builder rootfs`"
        )
    rootfs, podman = read_packages(ARTIFACT), read_packages(podman_artifact)
    debs = {line.split()[1]: line.split()[2] for line in rootfs if line.startswith("deb ")}
    assert debs.get("libpython3.11", "").startswith("3.11."), rootfs
    assert debs.get("libssl3"), rootfs
    only_rootfs = sorted(set(rootfs) - set(podman))
    only_podman = sorted(set(podman) - set(rootfs))
    report = (
        "rootfs only:\n  "
        + "\n  ".join(only_rootfs)
        + "\npodman only:\n  "
        + "\n  ".join(only_podman)
    )
    assert not only_rootfs, report
    assert not only_podman, report


@pytest.mark.arm64
@pytest.mark.parametrize("which", ["rootfs", "podman"])
def test_the_build_machines_ca_is_not_in_the_artifact(
    which: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    artifact = ARTIFACT if which == "rootfs" else request.getfixturevalue("podman_artifact")
    if not artifact.is_file():
        pytest.fail(f"{artifact} is missing")
    if not LOCAL_CAS:
        pytest.skip("this machine has no extra CA certificates in /usr/local/share/ca-certificates")
    data = artifact.read_bytes()
    # the check can fail on this very artifact: a certificate it does bundle (certifi's) is found
    bundled = [
        blob for name, _c, blob in manifest.members(data, "x") if name.endswith("cacert.pem")
    ]
    if bundled:
        first = bundled[0].split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
        control = tmp_path / "bundled.pem"
        control.write_bytes(first)
        assert manifest.contains_certificates(data, [str(control)]), (
            "the search misses a bundled cert"
        )
    assert manifest.contains_certificates(data, [str(p) for p in LOCAL_CAS]) == []


def test_manifest_cli_reports_a_missing_archive(tmp_path: Path) -> None:
    plain = tmp_path / "agentd-linux-arm64"
    plain.write_bytes(b"\x7fELF not a one-file build")
    proc = subprocess.run(
        [sys.executable, str(CROSS / "manifest.py"), "versions", str(plain)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "not a PyInstaller one-file executable" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the root cache's age -------------------------------------------------------------------------


def root_tarball(cache: Path, max_days: str) -> str:
    """lib.sh's root_tarball with make_root replaced by a stand-in (debootstrap takes minutes)."""
    script = (
        ". cross-build/lib.sh\n"
        'make_root() { echo "made $1 $2" >&2; mkdir -p "$(dirname "$4")"; echo root >"$4"; }\n'
        'root_tarball build arm64 && echo "$ROOT_TARBALL"\n'
    )
    env = {**os.environ, "AGENTD_CROSS_CACHE": str(cache), "AGENTD_CROSS_ROOT_MAX_DAYS": max_days}
    proc = subprocess.run(
        ["bash", "-c", script],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stderr


def test_a_cached_root_older_than_max_days_is_made_again(tmp_path: Path) -> None:
    assert "made build arm64" in root_tarball(tmp_path, "7")
    assert "made build" not in root_tarball(tmp_path, "7")  # fresh: the cache answers
    (tarball,) = (tmp_path / "roots").glob("build-bookworm-arm64-*.tar.zst")
    eight_days = 8 * 86400
    os.utime(tarball, (tarball.stat().st_atime - eight_days, tarball.stat().st_mtime - eight_days))
    assert "made build" not in root_tarball(tmp_path, "0")  # 0: kept forever
    out = root_tarball(tmp_path, "7")
    assert "older than 7 days" in out
    assert "made build arm64" in out
