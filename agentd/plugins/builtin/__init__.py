"""The built-in plugins, registered in code so a frozen binary has them."""

from agentd.plugins.base import PluginSpec
from agentd.plugins.builtin import (
    command,
    exec_actuator,
    file_actuator,
    file_sensor,
    log_actuator,
    modbus,
    mqtt,
    mqtt_device,
    net,
    openapi,
    process,
    rate,
    rules,
    session,
    system,
    threshold,
    webhook,
)

__all__ = ["BUILTINS"]

BUILTINS: list[PluginSpec] = [
    # sensors
    system.SPEC,
    file_sensor.SPEC,
    command.SPEC,
    net.SPEC,
    process.SPEC,
    modbus.SENSOR_SPEC,
    mqtt_device.SENSOR_SPEC,
    # policies
    threshold.SPEC,
    rules.SPEC,
    rate.SPEC,
    # actuators
    log_actuator.SPEC,
    exec_actuator.SPEC,
    file_actuator.SPEC,
    webhook.SPEC,
    openapi.SPEC,
    session.SPEC,
    modbus.ACTUATOR_SPEC,
    mqtt_device.ACTUATOR_SPEC,
    # uplinks (transports)
    mqtt.SPEC,
]
