"""Live streams on demand: the camera's encoded video repackaged as fMP4 over MQTT."""
