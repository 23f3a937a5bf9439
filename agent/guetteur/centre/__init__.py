"""Centre-side tools: talk to gateways over the MQTT contract (events, receive, live, ptz, snapshot)."""
