"""Object detection where motion says to look: manifests, regions, TFLite runtime, worker, CLI."""
