"""Where kerasfold is used from: the demo, the iOS build step, the verification notebook."""
