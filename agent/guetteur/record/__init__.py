"""Recording: the ring buffer of encoded segments, its index, retention, clips and export."""
