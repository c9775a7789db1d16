"""Device protocols behind the device plugins (MQTT devices, Modbus, OpenAPI), imported only
when such a plugin is configured."""
