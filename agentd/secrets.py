"""Secrets in plugin configs: how a config Struct marks them, how anything that shows a config
(``agentctl plugin NAME``, a log line, an error) hides them, and how a plugin reads one from a
file or a systemd credential instead of the config file.

A field is marked in its type: ``headers: Annotated[dict[str, str], SECRET] = {}`` (the whole
value is secret: a string, or every value of a table or list) or ``url: Annotated[str,
SECRET_URL]`` (only the ``user:password@`` part of a URL). Any plugin, built-in or third-party,
marks its fields the same way; ``redact()`` reads the marks from the type, so nothing else needs
to know which plugin has which secret.

systemd credentials (``LoadCredential=NAME:/etc/agentd/NAME`` in the unit) appear as files in
``$CREDENTIALS_DIRECTORY``, readable only by the service; ``read_credential(NAME)`` reads one."""

from __future__ import annotations

import functools
import os
import re
import stat
from collections.abc import Iterable, Mapping
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
import msgspec.inspect as mi
from msgspec import Meta

__all__ = [
    "MAX_SECRET",
    "REDACTED",
    "SECRET",
    "SECRET_URL",
    "SecretError",
    "SecretKind",
    "read_credential",
    "read_secret_file",
    "redact",
    "redact_raw",
    "redact_text",
    "secret_fields",
    "secret_values",
    "valid_credential_name",
]

SecretKind = Literal["value", "url"]
#: the whole value is secret (a string; every value of a table or list)
SECRET = Meta(extra={"secret": "value"}, extra_json_schema={"writeOnly": True})
#: a URL whose ``user:password@`` part is secret
SECRET_URL = Meta(extra={"secret": "url"}, extra_json_schema={"writeOnly": True})
#: what a redacted value is shown as
REDACTED = "<redacted>"
#: bytes a secret file may hold
MAX_SECRET = 64 * 1024
_CREDENTIAL = re.compile(r"[A-Za-z0-9_.@:+-]+")
#: parts of a secret value shorter than this are not searched for in text (too many false hits)
_MIN_PART = 8


class SecretError(OSError):
    """A secret cannot be read (missing, not a regular file, readable by others, ...)."""


# -- marking and redacting ---------------------------------------------------------------------
def _kind(t: mi.Type) -> SecretKind | None:
    if isinstance(t, mi.Metadata):
        mark = (t.extra or {}).get("secret")
        if mark in ("value", "url"):
            return mark  # type: ignore[no-any-return]
        return _kind(t.type)
    if isinstance(t, mi.UnionType):
        for member in t.types:
            kind = _kind(member)
            if kind:
                return kind
    return None


@functools.cache
def _fields(config_type: type[msgspec.Struct]) -> tuple[tuple[str, str, SecretKind | None], ...]:
    """(attribute, encoded name, secret kind or None) of each field of ``config_type``."""
    info = mi.type_info(config_type)
    if not isinstance(info, mi.StructType):
        return ()
    return tuple((f.name, f.encode_name, _kind(f.type)) for f in info.fields)


def secret_fields(config_type: type[msgspec.Struct]) -> dict[str, SecretKind]:
    """Encoded field name -> how it is secret, for the fields of ``config_type`` so marked."""
    return {name: kind for _, name, kind in _fields(config_type) if kind is not None}


def _hide(value: object, kind: SecretKind) -> object:
    if value is None:
        return None
    if kind == "url" and isinstance(value, str):
        return _hide_userinfo(value)
    if isinstance(value, Mapping):
        return dict.fromkeys(value, REDACTED)
    if isinstance(value, list | tuple):
        return [REDACTED for _ in value]
    return REDACTED


def _hide_userinfo(url: str) -> str:
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{REDACTED}@{host}"))


def _shown(value: object) -> object:
    if isinstance(value, msgspec.Struct):
        return redact(value)
    if isinstance(value, Mapping):
        return {k: _shown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_shown(v) for v in value]
    return msgspec.to_builtins(value)


def redact(config: msgspec.Struct) -> dict[str, object]:
    """``config`` as builtins (like ``msgspec.to_builtins``) with its secret fields hidden,
    nested Structs included."""
    out: dict[str, object] = {}
    for attr, name, kind in _fields(type(config)):
        value = getattr(config, attr)
        out[name] = _hide(value, kind) if kind else _shown(value)
    return out


def redact_raw(raw: Mapping[str, object], config_type: type[msgspec.Struct]) -> dict[str, object]:
    """A raw config table (as read from TOML) with the secret fields of ``config_type``
    hidden; keys it does not know are kept as they are."""
    kinds = secret_fields(config_type)
    return {k: _hide(v, kinds[k]) if k in kinds else v for k, v in raw.items()}


def _strings(value: object, kind: SecretKind) -> Iterable[str]:
    if isinstance(value, str):
        if kind == "url":
            parts = urlsplit(value)
            if parts.password:
                yield parts.password
            if "@" in parts.netloc:
                yield parts.netloc.rpartition("@")[0]
        else:
            yield value
            yield from (p for p in value.split() if len(p) >= _MIN_PART)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v, kind)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v, kind)


def secret_values(config: msgspec.Struct) -> list[str]:
    """Every secret string of ``config`` (and the longer words of each), longest first: what
    ``redact_text`` takes out of a message."""
    found: set[str] = set()
    for attr, _, kind in _fields(type(config)):
        if kind is not None:
            found.update(s for s in _strings(getattr(config, attr), kind) if len(s) >= 4)
    return sorted(found, key=len, reverse=True)


def redact_text(text: str, secrets: msgspec.Struct | Iterable[str]) -> str:
    """``text`` with every secret (of a config Struct, or the strings given) replaced by
    ``REDACTED``: for error messages and log lines that may quote a secret."""
    values = secret_values(secrets) if isinstance(secrets, msgspec.Struct) else secrets
    for value in sorted(values, key=len, reverse=True):
        if value:
            text = text.replace(value, REDACTED)
    return text


# -- reading -----------------------------------------------------------------------------------
def valid_credential_name(name: str) -> bool:
    """A systemd credential name: one file name in ``$CREDENTIALS_DIRECTORY``."""
    return bool(_CREDENTIAL.fullmatch(name)) and name not in (".", "..")


def read_secret_file(path: str) -> str:
    """The secret in ``path`` (one trailing line break dropped). Refused: a file other users
    can read, anything but a regular file (opened with O_NONBLOCK, so a FIFO never blocks),
    an empty file, one over ``MAX_SECRET`` bytes, or one holding a line break or NUL inside."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as exc:
        raise SecretError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = "a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device or a directory"
            raise SecretError(f"{path} is {what}, not a regular file")
        if st.st_mode & stat.S_IROTH:
            raise SecretError(f"{path} is readable by other users (chmod o-r {path})")
        data = os.read(fd, MAX_SECRET + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET:
        raise SecretError(f"{path} is over {MAX_SECRET} bytes")
    text = data.decode("utf-8", "replace").removesuffix("\n").removesuffix("\r")
    if not text:
        raise SecretError(f"{path} is empty")
    if any(ch in text for ch in "\r\n\x00"):
        raise SecretError(f"{path} holds a line break or NUL inside the secret")
    return text


def read_credential(name: str) -> str:
    """The systemd credential ``name`` (``LoadCredential=`` / ``SetCredentialEncrypted=`` in
    the unit), from ``$CREDENTIALS_DIRECTORY``."""
    if not valid_credential_name(name):
        raise SecretError(f"{name!r} is not a credential name")
    base = os.environ.get("CREDENTIALS_DIRECTORY")
    if not base:
        raise SecretError(
            f"credential {name!r}: no $CREDENTIALS_DIRECTORY "
            f"(add LoadCredential={name}:/path/to/secret to the unit)"
        )
    return read_secret_file(os.path.join(base, name))
