"""Device protocols behind the device plugins (agentd/plugins/builtin/{mqtt_device,modbus,openapi}.py): imported only when such a plugin is configured."""
