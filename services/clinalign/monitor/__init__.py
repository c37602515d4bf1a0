"""Monitor service: production outputs, clinician flags, drift and the retraining loop."""
