"""agentctl's output: aligned tables and ``systemctl status``-style summaries, rendered from the
reply Structs (agentd/model.py, agentd/control/protocol.py) by their typed fields, so mypy sees
a renamed field here. ``--json`` prints the reply as the daemon sent it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Sequence

import msgspec

from agentd.control.protocol import HelloInfo, StateEvent
from agentd.model import (
    ActionResult,
    MetricPoint,
    Observation,
    PluginDetail,
    PluginInfo,
    PluginStatus,
    Session,
    StatusReport,
    TickReport,
    Value,
)

__all__ = [
    "Output",
    "action_table",
    "cell",
    "clip",
    "clock",
    "duration",
    "event_line",
    "hello",
    "metrics_table",
    "ms",
    "observations_table",
    "plugin_detail",
    "plugin_table",
    "session",
    "sessions_table",
    "size",
    "status",
    "tick_report",
    "when",
]


class Output:
    def __init__(self, as_json: bool) -> None:
        self.json = as_json

    @staticmethod
    def line(text: str = "") -> None:
        sys.stdout.write(text + "\n")

    @staticmethod
    def dump(value: object) -> None:
        sys.stdout.write(json.dumps(value, indent=2, default=str) + "\n")

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
        cells = [[cell(v) for v in row] for row in rows]
        widths = [len(h) for h in headers]
        # a column is right-aligned when every value in it is a number (or empty)
        numeric = [
            any(len(row) > i and _looks_numeric(row[i]) for row in cells)
            for i in range(len(headers))
        ]
        for row in cells:
            for i, v in enumerate(row):
                widths[i] = max(widths[i], len(v))
                if v not in ("-", "") and not _looks_numeric(v):
                    numeric[i] = False
        last = len(headers) - 1

        def fmt(row: Sequence[str]) -> str:
            parts = []
            for i, v in enumerate(row):
                if i == last and not numeric[i]:
                    parts.append(v)
                elif numeric[i]:
                    parts.append(v.rjust(widths[i]))
                else:
                    parts.append(v.ljust(widths[i]))
            return "  ".join(parts).rstrip()

        self.line(fmt(list(headers)))
        for row in cells:
            self.line(fmt(row))


# -- cells -----------------------------------------------------------------------------------
def cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def _looks_numeric(text: str) -> bool:
    try:
        float(text.rstrip("%").removesuffix(" ms"))
    except ValueError:
        return False
    return True


def ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.2f} ms"


def size(n: float) -> str:
    for unit in ("B", "K", "M", "G"):
        if abs(n) < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


def duration(seconds: float) -> str:
    """systemd-style: 1h 2min 3s."""
    s = int(seconds)
    if s < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
    parts = []
    for unit, span in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if s >= span:
            parts.append(f"{s // span}{unit}")
            s %= span
    return " ".join(parts[:3])


def when(ts: float | None) -> str:
    if not ts:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) + f".{int(ts % 1 * 1000):03d}"


def clip(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1e6:.0f} us" if value < 0.001 else ms(value)


def _g(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


# -- replies ---------------------------------------------------------------------------------
def hello(out: Output, r: HelloInfo) -> None:
    out.line(
        f"{r.server} (pid {r.pid}), protocol {r.protocol}, you are uid {r.uid} with role {r.role}"
    )
    limits = msgspec.structs.asdict(r.limits)
    out.line(
        "limits: "
        + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in sorted(limits.items()))
        + "\n"
    )
    out.table(
        ["COMMAND", "ROLE", "DESCRIPTION"],
        [(name, c.role, c.help.split("\n")[0]) for name, c in sorted(r.commands.items())],
    )


def status(out: Output, r: StatusReport) -> None:
    loop, proc, ctl = r.loop, r.process, r.control
    plugins = r.plugins
    ok = sum(p.state == "ok" for p in plugins)
    state = r.state + (" (paused)" if loop.paused else "")
    dot = "●" if (sys.stdout.encoding or "").lower().startswith("utf") else "*"
    out.line(f"{dot} agentd {r.version} - {state}")
    started = time.time() - r.uptime
    rows = [
        ("Active", f"{state} since {when(started)}; {duration(r.uptime)} ago"),
        ("PID", str(r.pid)),
        ("Config", f"{r.config} (reload generation {r.reload_generation})"),
        (
            "Loop",
            f"{loop.ticks} ticks every {loop.interval:g}s; lateness p50 "
            f"{ms(loop.lateness_p50)}, p99 {ms(loop.lateness_p99)}, max "
            f"{ms(loop.lateness_max)}; {loop.overruns} overruns, {loop.skipped} skipped",
        ),
        (
            "Tick",
            f"last {ms(loop.last.total)} (perceive {ms(loop.last.perceive)}, decide "
            f"{ms(loop.last.decide)}, act {ms(loop.last.act)}); mean {ms(loop.mean.total)}",
        ),
        ("Actions", f"{r.actions_in_flight} in flight, {r.dropped_actions} dropped"),
        ("Plugins", f"{ok}/{len(plugins)} ok"),
        ("Store", _summary(r.store, "disabled")),
        (
            "Process",
            f"RSS {size(proc.rss)}, CPU {proc.cpu_user + proc.cpu_system:.2f}s "
            f"({proc.cpu_percent:.1f}% of a core), {proc.threads} threads, {proc.fds} fds",
        ),
    ]
    if ctl is not None:
        errors = sum(ctl.errors.values())
        rows.append(
            (
                "Control",
                f"{ctl.connections} connections, {ctl.requests} requests, {errors} "
                f"errors, {ctl.watchers} watchers ({ctl.watch_dropped} dropped)",
            )
        )
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        out.line(f"{key.rjust(width + 2)}: {value}")
    if plugins:
        out.line()
        plugin_table(out, plugins)


def _summary(value: msgspec.Struct | None, none: str) -> str:
    """A one-line form of a Struct, every scalar field (``state`` first), so a field added
    to the store's health shows up without a change here."""
    if value is None:
        return none
    fields = msgspec.structs.asdict(value)
    first = [k for k in ("state", "status") if k in fields]
    keys = first + [k for k in fields if k not in first]
    parts = []
    for k in keys:
        v = fields[k]
        if isinstance(v, dict | list | msgspec.Struct):
            continue
        if isinstance(v, float) and v > 1e9:  # a Unix time
            shown = when(v)
        elif isinstance(v, int) and not isinstance(v, bool) and "bytes" in k:
            shown = size(v)
        else:
            shown = cell(v)
        parts.append(shown if k in first else f"{k.replace('_', ' ')} {shown}")
    return ", ".join(parts)


def plugin_table(out: Output, plugins: Sequence[PluginStatus | PluginInfo]) -> None:
    out.table(
        ["NAME", "KIND", "PLUGIN", "STATE", "CALLS", "ERRORS", "LAST ERROR"],
        [
            (
                p.name,
                p.kind,
                p.plugin,
                p.state,
                p.calls,
                p.errors,
                p.last_error if p.state != "ok" else "-",
            )
            for p in plugins
        ],
    )


def plugin_detail(out: Output, r: PluginDetail) -> None:
    if r.configured:
        out.line(f"{r.name} ({r.kind}, plugin {r.plugin} from {r.origin}) - {r.state}")
        if r.description:
            out.line(f"  {r.description}")
        out.line(f"  calls {r.calls}, errors {r.errors}")
        if isinstance(r.last_error, str) and r.last_error:
            out.line(f"  last error: {r.last_error}")
        if r.actions:
            out.line(f"  actions: {', '.join(r.actions)}")
        out.line("\nConfig:")
        for k, v in (r.config or {}).items():
            out.line(f"  {k} = {json.dumps(v, default=str)}")
    else:
        out.line(f"{r.name}: a registered plugin, not configured here")
    out.line("\nSchema:")
    out.line(json.dumps(r.schema, indent=2, sort_keys=True))


def sessions_table(out: Output, sessions: Sequence[Session]) -> None:
    out.table(
        ["ID", "VERSION", "UPDATED", "EXPIRES", "STATE"],
        [
            (
                s.id,
                s.version,
                when(s.updated_at),
                when(s.expires_at),
                clip(json.dumps(s.state, default=str), 48),
            )
            for s in sessions
        ],
    )


def session(out: Output, s: Session) -> None:
    out.line(f"session {s.id} (version {s.version})")
    out.line(f"  created {when(s.created_at)}, updated {when(s.updated_at)}")
    if s.expires_at:
        out.line(f"  expires {when(s.expires_at)}")
    out.line(json.dumps(s.state, indent=2, default=str))


def observations_table(out: Output, rows: Sequence[Observation]) -> None:
    out.table(
        ["TICK", "TIME", "READINGS", "ERRORS", "SAMPLE"],
        [
            (
                o.tick,
                when(o.wall),
                sum(len(m) for m in o.readings.values()),
                len(o.errors),
                clip(_sample(o.readings), 60),
            )
            for o in rows
        ],
    )


def _sample(readings: dict[str, dict[str, Value]]) -> str:
    return " ".join(
        f"{s}.{m}={cell(v)}" for s, metrics in readings.items() for m, v in metrics.items()
    )


def action_table(out: Output, results: Sequence[ActionResult]) -> None:
    out.table(
        ["FINISHED", "ACTUATOR", "ACTION", "STATUS", "ATTEMPTS", "DURATION", "SOURCE", "ERROR"],
        [
            (
                when(x.finished_at),
                x.action.actuator,
                x.action.name,
                x.status,
                x.attempts,
                ms(x.duration),
                x.action.source or "-",
                x.error or "-",
            )
            for x in results
        ],
    )


def tick_report(out: Output, r: TickReport) -> None:
    obs, t = r.observation, r.timings
    n = sum(len(m) for m in obs.readings.values())
    out.line(
        f"tick {r.tick}: {n} readings, {len(obs.errors)} errors, "
        f"{len(r.results)} actions in {ms(t.total)} (perceive {ms(t.perceive)}, "
        f"decide {ms(t.decide)}, act {ms(t.act)})\n"
    )
    out.table(
        ["SENSOR", "METRIC", "VALUE"],
        [(s, m, v) for s, metrics in obs.readings.items() for m, v in metrics.items()]
        + [(s, "(error)", e) for s, e in obs.errors.items()],
    )
    if r.results:
        out.line()
        action_table(out, r.results)


def action_line(r: ActionResult) -> str:
    a = r.action
    line = f"{r.status}: {a.actuator}.{a.name} ({r.attempts} attempts, {ms(r.duration)})"
    if r.output is not None:
        line += f": {cell(r.output)}"
    return line


def event_line(kind: str, data: msgspec.Raw) -> str:
    """One ``watch`` event as a line; a kind this agentctl does not know is shown as JSON."""
    now = clock(time.time())
    if kind == "tick":
        d = msgspec.msgpack.decode(data, type=TickReport)
        obs, t = d.observation, d.timings
        n = sum(len(m) for m in obs.readings.values())
        manual = " (manual)" if d.manual else ""
        return (
            f"{clock(obs.wall)} tick {d.tick}{manual}: late {ms(d.lateness)}, "
            f"took {ms(t.total)}, {n} readings, {len(obs.errors)} errors, "
            f"{len(d.results)} actions"
        )
    if kind == "action":
        r = msgspec.msgpack.decode(data, type=ActionResult)
        a = r.action
        tail = f": {r.error}" if r.error else ""
        src = f" from {a.source}" if a.source else ""
        return (
            f"{clock(r.finished_at or time.time())} action {a.actuator}.{a.name} "
            f"{r.status} ({r.attempts} attempts, {ms(r.duration)}){src}{tail}"
        )
    if kind == "state":
        e = msgspec.msgpack.decode(data, type=StateEvent)
        extra = f" generation={e.generation}" if e.generation is not None else ""
        return f"{now} state {e.state}{extra}"
    return f"{now} {kind} {json.dumps(msgspec.msgpack.decode(data), default=str)}"


def metrics_table(out: Output, points: Sequence[MetricPoint]) -> None:
    def value(m: MetricPoint) -> str:
        if m.kind != "histogram":
            v = m.value if m.value is not None else 0.0
            return size(v) if m.unit == "By" else f"{v:g}"
        if m.unit == "s":
            return f"n={m.count} p50={_seconds(m.p50)} p99={_seconds(m.p99)}"
        return f"n={m.count} p50={_g(m.p50)} p99={_g(m.p99)}"

    out.table(
        ["METRIC", "ATTRIBUTES", "VALUE", "UNIT"],
        [
            (
                m.name,
                ",".join(f"{k}={v}" for k, v in m.attributes.items()) or "-",
                value(m),
                m.unit,
            )
            for m in points
        ],
    )
