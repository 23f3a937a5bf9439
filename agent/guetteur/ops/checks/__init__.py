"""What `guetteur doctor` checks, one module per subject: cameras, broker, host (clock, disk, files)."""
