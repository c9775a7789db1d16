"""The control plane's uplink replies (`agentd.model`) mirror the engine's state Structs
(`agentd.uplink.state`) field for field: a field or a phase added on one side and not the other
fails here, not in agentctl's decoder on a gateway."""

from __future__ import annotations

from typing import get_args, get_type_hints

import msgspec

from agentd.model import UplinkStatus, UplinkStreamStatus
from agentd.uplink.state import Phase, StreamState, UplinkHealth, UplinkState
from agentd.uplinking import status

#: the one renamed field: the reply says ``backlog`` (rows), as the issue's scripts expect
RENAMED = {"backlog_rows": "backlog"}


def test_every_state_field_has_its_reply_field() -> None:
    assert set(UplinkState.__struct_fields__) == set(UplinkStatus.__struct_fields__)
    ours = {RENAMED.get(f, f) for f in StreamState.__struct_fields__}
    assert ours == set(UplinkStreamStatus.__struct_fields__)


def test_the_choices_agree() -> None:
    hints = get_type_hints(UplinkStatus)
    assert set(get_args(hints["phase"])) == set(get_args(Phase))
    assert set(get_args(hints["health"])) == set(get_args(UplinkHealth))


def test_status_converts_every_field_and_agentctl_decodes_it() -> None:
    stream = StreamState(
        stream="events",
        acked=7,
        head=9,
        confirmed=None,
        backlog_rows=2,
        backlog_bytes=300,
        oldest_age=1.5,
        in_flight=1,
        delivered=7,
        batches=3,
        duplicates=1,
        gap_rows=4,
        gaps=1,
        refused=0,
        last_error=None,
    )
    state = UplinkState(
        name="fleet",
        node="gw",
        phase="connected",
        health="ok",
        reason=None,
        connected=True,
        since=1.0,
        protocol="mqtt5",
        window=8,
        reconnects=2,
        last_error=None,
        epoch="e" * 32,
        streams=(stream,),
    )
    reply = status(state)
    wire = msgspec.msgpack.encode([reply])
    decoded = msgspec.msgpack.decode(wire, type=list[UplinkStatus])[0]
    assert decoded == reply
    assert decoded.streams[0].backlog == 2
    for field in StreamState.__struct_fields__:
        assert getattr(decoded.streams[0], RENAMED.get(field, field)) == getattr(stream, field)
    for field in UplinkState.__struct_fields__:
        if field != "streams":
            assert getattr(decoded, field) == getattr(state, field)
