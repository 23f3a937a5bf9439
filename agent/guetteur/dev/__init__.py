"""For demos and tests: the demo, a private broker, synthetic scenes with known truth."""
