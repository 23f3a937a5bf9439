"""The operators' command-line tools: clients of the centre server (live, ptz, snapshot, export) and a
broker watcher (events)."""
