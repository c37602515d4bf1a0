"""Generation service: serves the aligned policy to EHR systems."""
