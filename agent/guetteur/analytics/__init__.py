"""Analysis of decoded frames: motion, masks, object detection and the event state machine."""
