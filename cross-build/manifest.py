"""What a one-file agentd artifact bundles, read from the artifact itself (stdlib only: it runs
with Debian's python3 inside the build roots and with any Python >= 3.9 on the host).

  manifest.py packages ARTIFACT [--venv DIR] [--root DIR]
      the manifest written beside every cross-built artifact (agentd-linux-<arch>.packages):
      each bundled shared library with the Debian package and version it came from (read from
      the dpkg database of --root, default /), then the Python distributions of the venv the
      bundle was made from. Two builders that agree write the same manifest.
  manifest.py versions ARTIFACT
      the versions the bundled libpython and libssl/libcrypto announce in their own bytes
      (Python's build string, OpenSSL's version text): evidence from the artifact, not a claim.
  manifest.py contains ARTIFACT PEM...
      exit 1 if any certificate of the PEM files appears in the artifact (raw or in any bundled
      member, decompressed): a build-time CA must never ship.

The archive is PyInstaller's CArchive, appended to the bootloader: a cookie at the end
(magic, package length, TOC offset and length, Python version, libpython name), then TOC entries
(entry length, offset, compressed length, length, compression flag, type code, name).
"""

from __future__ import annotations

import argparse
import base64
import glob
import os
import re
import struct
import sys
import zlib
from collections.abc import Iterator

__all__ = ["bundled_versions", "contains_certificates", "members", "read_toc"]

MAGIC = b"MEI\014\013\012\013\016"
COOKIE = "!8sIIII64s"
ENTRY = "!IIIIBc"
# PyInstaller type codes: b binary (shared library or extension), x data file, z PYZ archive
BINARY = "b"


def _cookie_offset(data: bytes) -> int:
    pos = data.rfind(MAGIC)
    if pos < 0:
        raise ValueError("not a PyInstaller one-file executable (no archive cookie)")
    return pos


def read_toc(data: bytes) -> tuple[int, list[tuple[str, str, int, int, bool]]]:
    """(archive start, [(name, type code, offset, length, compressed)]) of a one-file binary."""
    pos = _cookie_offset(data)
    size = struct.calcsize(COOKIE)
    _magic, pkg_len, toc_off, toc_len, _pyver, _pylib = struct.unpack(
        COOKIE, data[pos : pos + size]
    )
    start = pos + size - pkg_len
    toc = data[start + toc_off : start + toc_off + toc_len]
    head = struct.calcsize(ENTRY)
    entries = []
    cur = 0
    while cur < len(toc):
        entry_len, off, length, _ulen, flag, code = struct.unpack(ENTRY, toc[cur : cur + head])
        if entry_len < head:
            raise ValueError("corrupt archive table of contents")
        name = toc[cur + head : cur + entry_len].rstrip(b"\0").decode("utf-8")
        entries.append((name, code.decode("ascii"), off, length, bool(flag)))
        cur += entry_len
    return start, entries


def members(data: bytes, codes: str | None = None) -> Iterator[tuple[str, str, bytes]]:
    """(name, type code, content) of each bundled member, decompressed."""
    start, entries = read_toc(data)
    for name, code, off, length, compressed in entries:
        if codes is not None and code not in codes:
            continue
        blob = data[start + off : start + off + length]
        yield name, code, zlib.decompress(blob) if compressed else blob


# --- packages ------------------------------------------------------------------------------------


def _dpkg_owners(root: str) -> dict[str, str]:
    """basename of every shared library a package ships -> the package (from *.list files)."""
    owners: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(root, "var/lib/dpkg/info/*.list"))):
        package = os.path.basename(path)[: -len(".list")].split(":")[0]
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                base = os.path.basename(line.rstrip("\n"))
                if ".so" in base:
                    owners.setdefault(base, package)
    return owners


def _dpkg_versions(root: str) -> dict[str, str]:
    versions: dict[str, str] = {}
    with open(os.path.join(root, "var/lib/dpkg/status"), encoding="utf-8") as f:
        for stanza in f.read().split("\n\n"):
            fields = dict(re.findall(r"^([A-Za-z-]+): (.*)$", stanza, re.M))
            if "Package" in fields and "installed" in fields.get("Status", ""):
                versions[fields["Package"]] = fields.get("Version", "?")
    return versions


def _venv_dists(venv: str) -> list[tuple[str, str]]:
    found = []
    for meta in glob.glob(os.path.join(venv, "lib/python3*/site-packages/*.dist-info/METADATA")):
        with open(meta, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
        name = re.search(r"^Name: (.+)$", head, re.M)
        version = re.search(r"^Version: (.+)$", head, re.M)
        if name and version:
            found.append(
                (re.sub(r"[-_.]+", "-", name.group(1).strip()).lower(), version.group(1).strip())
            )
    return sorted(found)


def packages(artifact: str, venv: str | None, root: str) -> str:
    with open(artifact, "rb") as f:
        data = f.read()
    owners = _dpkg_owners(root)
    versions = _dpkg_versions(root)
    debs: dict[str, set[str]] = {}
    other: list[str] = []
    for name, _code, _off, _len, _z in read_toc(data)[1]:
        if _code != BINARY:
            continue
        package = owners.get(os.path.basename(name))
        if package is None:
            other.append(name)
        else:
            debs.setdefault(package, set()).add(os.path.basename(name))
    lines = [f"# {os.path.basename(artifact)}: what it bundles (cross-build/manifest.py packages)"]
    for package in sorted(debs):
        lines.append(
            f"deb {package} {versions.get(package, '?')} {' '.join(sorted(debs[package]))}"
        )
    lines.extend(f"lib {name} (not from a Debian package)" for name in sorted(other))
    if venv:
        lines.extend(f"py {name} {version}" for name, version in _venv_dists(venv))
    return "\n".join(lines) + "\n"


# --- versions ------------------------------------------------------------------------------------

# Py_GetVersion() is assembled at run time: its parts lie apart in libpython's rodata, among
# them __TIME__ and __DATE__ of the build (which tell two builds of one upstream version apart),
# NUL-padded as the architecture aligns them.
PY_VERSION = re.compile(rb"\x00(3\.\d+\.\d+(?:[abc]\d+|rc\d+)?\+?)\x00")
PY_BUILT = re.compile(rb"\x00([0-2]\d:[0-5]\d:[0-5]\d)\x00+([A-Z][a-z]{2} [ \d]\d \d{4})\x00")
OPENSSL = re.compile(rb"OpenSSL (\d+\.\d+\.\d+[a-z]?)\s+(\d{1,2} [A-Z][a-z]{2} \d{4})")


def bundled_versions(data: bytes) -> dict[str, str]:
    """{'libpython': '3.11.2 (built Apr 28 2025 ...)', 'libssl': 'OpenSSL 3.0.17 1 Jul 2025'}."""
    found: dict[str, str] = {}
    for name, _code, blob in members(data, BINARY):
        base = os.path.basename(name)
        if base.startswith("libpython") and "libpython" not in found:
            version = PY_VERSION.search(blob)
            built = PY_BUILT.search(blob)
            found["libpython"] = " ".join(
                [base, version.group(1).decode() if version else "?"]
                + (
                    [f"(built {built.group(2).decode()} {built.group(1).decode()})"]
                    if built
                    else []
                )
            )
        elif base.startswith(("libssl.so", "libcrypto.so")) and "libssl" not in found:
            m = OPENSSL.search(blob)
            if m:
                found["libssl"] = f"{base} OpenSSL {m.group(1).decode()} {m.group(2).decode()}"
    return found


# --- contains ------------------------------------------------------------------------------------


def _pem_bodies(path: str) -> list[bytes]:
    with open(path, encoding="ascii", errors="replace") as f:
        text = f.read()
    return [
        base64.b64decode("".join(body.split()))
        for body in re.findall(
            r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", text, re.S
        )
    ]


def contains_certificates(data: bytes, pems: list[str]) -> list[str]:
    """The certificates (by file and index) found in the artifact, as PEM text or as DER."""
    hay = [data] + [blob for _n, _c, blob in members(data)]
    hits = []
    for path in pems:
        for i, der in enumerate(_pem_bodies(path)):
            # a 64-character line from the middle of the PEM text, and the DER itself
            b64 = base64.b64encode(der)
            needles = [der, b64[64:128] if len(b64) >= 128 else b64]
            if any(n in blob for blob in hay for n in needles):
                hits.append(f"{path}#{i}")
    return hits


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="manifest.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("packages")
    p.add_argument("artifact")
    p.add_argument("--venv")
    p.add_argument("--root", default="/")
    v = sub.add_parser("versions")
    v.add_argument("artifact")
    c = sub.add_parser("contains")
    c.add_argument("artifact")
    c.add_argument("pem", nargs="+")
    args = parser.parse_args(argv)
    try:
        if args.cmd == "packages":
            sys.stdout.write(packages(args.artifact, args.venv, args.root))
            return 0
        with open(args.artifact, "rb") as f:
            data = f.read()
        if args.cmd == "versions":
            for key, value in sorted(bundled_versions(data).items()):
                print(f"{key}: {value}")
            return 0
        hits = contains_certificates(data, args.pem)
        for hit in hits:
            print(f"{args.artifact} contains the certificate {hit}")
        return 1 if hits else 0
    except (OSError, ValueError, struct.error, zlib.error) as e:
        print(f"manifest.py: {args.artifact}: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
