"""The link to the centre: MQTT session, protocol, commands, audit and the durable outbox."""
