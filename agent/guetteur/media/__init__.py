"""What flows from sources to the rest: encoded packets, analytic frames, H.264/H.265 bitstreams."""
