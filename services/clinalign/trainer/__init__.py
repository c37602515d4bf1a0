"""Trainer service: training jobs, the model registry and the promotion gate."""
