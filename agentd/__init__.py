"""agentd: an edge agent daemon for IoT gateways.

Kept import-light on purpose: `agentd version` and `agentctl` must answer before uvloop,
sqlite3, paho-mqtt or OpenTelemetry are imported.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
