"""What ``check-config`` (and ``agentd test``) check beyond the shapes `config.load` checks: the
references between instances, and the programs the config names on this host.

- a policy's metrics name a configured, enabled sensor, and a metric it produces where the
  sensor's config declares them (``produces()``, below);
- a policy's actuator offers the action (``offers()`` where the actions depend on the config);
- a placeholder an actuator's action needs (``needs(action)``: an ``exec`` argv's ``{param}``)
  is in every params table a policy sends it;
- a policy's fixed params satisfy the action's params schema where the actuator declares one
  (``action_schemas()``: ``openapi``, ``mqtt``, ``modbus``), and the params the policy adds
  itself (``EXTRA_PARAMS``) are ones the schema accepts;
- what a config names on this host exists (``host_problems()``: an ``exec`` program must be an
  executable file).

A plugin's config Struct declares these with optional methods, so third-party plugins can too:

- sensors: ``produces(self) -> Mapping[str, str] | None``: metric name -> unit (``""`` when it
  has none); a name ending in ``.*`` stands for any metric under that prefix; None: the names
  are known only once it reads (a command's JSON output).
- actuators: ``offers(self) -> Collection[str] | None`` and ``needs(self, action) ->
  Collection[str]``.
- policies: the keys ``metric``, ``conditions[].metric``, ``actuator``, ``action``, ``params``,
  ``clear_action``, ``clear_params`` are read by name, and ``{sensor.metric}`` references in
  params; ``EXTRA_PARAMS`` (a class attribute) names the params it adds to every action
  (`threshold`: ``metric``, ``value``, ``threshold``).

Not checked by `config.load` (so not by ``agentd run`` or a reload): a config that names a
program installed later still starts. Each problem is one line naming the key path, with a
"did you mean" when one known name is close.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentd.config import Config
    from agentd.config_plugins import PluginCatalog, PluginInstance

__all__ = [
    "check_host",
    "check_references",
    "declared_metrics",
    "did_you_mean",
    "executable_problem",
]

#: ``{sensor.metric}`` / ``{sensor.metric:.1f}`` in params (the template syntax of
#: agentd/plugins/builtin/_template.py; a reference without a dot is an extra like ``{tick}``)
_REF = re.compile(r"\{([A-Za-z0-9_][A-Za-z0-9_\-]*\.[A-Za-z0-9_.\-]+)(?::[^{}]*)?\}")


def did_you_mean(name: str, known: Collection[str]) -> str:
    """`` (did you mean 'x'?)`` when exactly one known name is close, else ``""``."""
    import difflib  # only for a config with a mistake: not in every daemon (issue #18)

    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if len(close) == 1 else ""


def declared_metrics(config: object) -> Mapping[str, str] | None:
    """A sensor config's ``produces()`` (metric -> unit), or None when it declares none."""
    produces = getattr(config, "produces", None)
    if not callable(produces):
        return None
    out = produces()
    return out if isinstance(out, Mapping) else None


def _matches(metric: str, declared: Mapping[str, str]) -> bool:
    if metric in declared:
        return True
    return any(n.endswith(".*") and metric.startswith(n[:-1]) for n in declared)


def _metric_refs(config: object) -> Iterator[tuple[str, str]]:
    """(key path, "sensor.metric") for every metric a policy config reads."""
    metric = getattr(config, "metric", None)
    if isinstance(metric, str):
        yield "metric", metric
    for i, cond in enumerate(getattr(config, "conditions", None) or ()):
        m = getattr(cond, "metric", None)
        if isinstance(m, str):
            yield f"conditions[{i}].metric", m
    for table in ("params", "clear_params"):
        for path, text in _strings(getattr(config, table, None), table):
            for ref in _REF.findall(text):
                yield path, ref


def _strings(node: Any, path: str) -> Iterator[tuple[str, str]]:
    if isinstance(node, str):
        yield path, node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _strings(v, f"{path}[{i}]")


#: any ``{...}`` placeholder: a value holding one is only known when the policy fills it
_PLACEHOLDER = re.compile(r"\{[A-Za-z_][^{}]*\}")


def _templated(value: object) -> bool:
    return any(_PLACEHOLDER.search(text) for _, text in _strings(value, ""))


def _schema_problems(
    where: str, table: str, target: str, action: str, params: object, extra: set[str], act: object
) -> list[str]:
    """A policy's fixed params against the action's params schema, where the actuator's config
    declares one (``action_schemas()``: openapi, mqtt, modbus): values that are placeholders
    and the params the policy adds itself (``EXTRA_PARAMS``) are only known at run time, so
    those are checked by name only."""
    from agentd.plugins.paramschema import ParamsSchema, declared_action_schemas

    schemas = declared_action_schemas(act)
    schema = schemas.get(action) if schemas else None
    if not isinstance(schema, Mapping) or not isinstance(params, dict):
        return []
    properties = schema.get("properties")
    known = set(properties) if isinstance(properties, Mapping) else set()
    closed = schema.get("additionalProperties") is False
    refused = sorted(extra - known) if closed else []
    if refused:
        return [
            f"{where}.{table}: this policy adds {', '.join(refused)} to the params it sends, "
            f"which actuator {target!r} action {action!r} does not accept "
            f"(it takes: {', '.join(sorted(known)) or 'none'}); use a `rules` policy"
        ]
    later = extra | {k for k, v in params.items() if _templated(v)}
    fixed = {k: v for k, v in params.items() if k not in later}
    required = schema.get("required")
    if isinstance(required, list):
        schema = {**schema, "required": [r for r in required if r not in later]}
    problem = ParamsSchema(schema).problem(fixed, where=f"{where}.{table}")
    return [f"{problem} (actuator {target!r} action {action!r})"] if problem else []


def _sends(config: object) -> Iterator[tuple[str, str, set[str]]]:
    """(key path, action, param names) for every action a policy config may send."""
    extra = set(getattr(config, "EXTRA_PARAMS", ()))
    action = getattr(config, "action", None)
    params = getattr(config, "params", None)
    if isinstance(action, str):
        yield "action", action, extra | set(params if isinstance(params, dict) else ())
    clear = getattr(config, "clear_action", None)
    if isinstance(clear, str):
        # a policy without its own clear_params sends its params when clearing (threshold)
        cparams = getattr(config, "clear_params", params)
        yield "clear_action", clear, extra | set(cparams if isinstance(cparams, dict) else ())


def check_references(config: Config, catalog: PluginCatalog) -> list[str]:
    """One line per reference that can never resolve (see the module docstring)."""
    errors: list[str] = []
    sensors = config.sensors
    actuators = config.actuators
    for name, inst in config.policies.items():
        if not inst.enabled:
            continue
        where = f"policies.{name}"
        for path, ref in _metric_refs(inst.config):
            errors += _check_metric(f"{where}.{path}", ref, sensors)
        target = getattr(inst.config, "actuator", None)
        if not isinstance(target, str):
            continue
        act = actuators.get(target)
        if act is None:
            continue  # config.load says so already (with a "did you mean")
        if not act.enabled:
            errors.append(f"{where}.actuator: actuator {target!r} is disabled")
            continue
        offered = _offered(act, catalog)
        for path, action, params in _sends(inst.config):
            if offered is not None and action not in offered:
                shown = ", ".join(sorted(offered)) or "none"
                errors.append(
                    f"{where}.{path}: actuator {target!r} has no action {action!r}"
                    f"{did_you_mean(action, offered)} (offers: {shown})"
                )
                continue
            needs = getattr(act.config, "needs", None)
            missing = sorted(set(needs(action)) - params) if callable(needs) else []
            table = "clear_params" if path == "clear_action" else "params"
            params_sent = getattr(inst.config, "params", None)
            # as _sends: a policy without its own clear_params sends its params when clearing
            sent = params_sent if table == "params" else getattr(inst.config, table, params_sent)
            errors += _schema_problems(
                where,
                table,
                target,
                action,
                sent,
                set(getattr(inst.config, "EXTRA_PARAMS", ())),
                act.config,
            )
            if missing:
                errors.append(
                    f"{where}.{table}: actuator {target!r} action {action!r} needs "
                    + ", ".join(f"{{{m}}}" for m in missing)
                    + f", which {name!r} does not send"
                )
    return errors


def _check_metric(where: str, ref: str, sensors: Mapping[str, PluginInstance]) -> list[str]:
    sensor, _, metric = ref.partition(".")
    inst = sensors.get(sensor)
    if inst is None:
        known = ", ".join(sorted(sensors)) or "none"
        hint = did_you_mean(sensor, sensors)
        return [f"{where}: no sensor named {sensor!r} is configured{hint} (configured: {known})"]
    if not inst.enabled:
        return [f"{where}: sensor {sensor!r} is disabled"]
    declared = declared_metrics(inst.config)
    if declared is None or _matches(metric, declared):
        return []
    shown = ", ".join(sorted(declared)) or "none"
    return [
        f"{where}: sensor {sensor!r} has no metric {metric!r}"
        f"{did_you_mean(metric, declared)} (it produces: {shown})"
    ]


def _offered(act: PluginInstance, catalog: PluginCatalog) -> Collection[str] | None:
    """The action names an actuator instance accepts (None: any)."""
    offers = getattr(act.config, "offers", None)
    if callable(offers):
        names = offers()
        if names is not None:
            return set(names)
    spec = catalog.schema(act.plugin, "actuator")
    actions: Mapping[str, object] = getattr(spec, "actions", {}) or {}
    return None if "*" in actions or not actions else set(actions)


def check_host(config: Config) -> list[str]:
    """One line per program or path the config names that is not usable on this host."""
    errors: list[str] = []
    for section, by_name in config.plugin_sections.items():
        for name, inst in by_name.items():
            problems = getattr(inst.config, "host_problems", None)
            if inst.enabled and callable(problems):
                errors += [f"{section}.{name}.{p}" for p in problems()]
    return errors


def executable_problem(path: str) -> str | None:
    """Why ``path`` cannot be run as a program, or None."""
    if not os.path.isabs(path):
        return f"{path!r} is not an absolute path"
    if not os.path.exists(path):
        return f"{path!r} does not exist"
    if not os.path.isfile(path):
        return f"{path!r} is not a file"
    # root passes access(X_OK) on a file with any x bit; exec needs one at all
    if not os.access(path, os.X_OK) or not os.stat(path).st_mode & 0o111:
        return f"{path!r} is not executable"
    return None
