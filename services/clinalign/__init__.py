"""ClinAlign: a closed-loop RLHF platform for clinical language models."""

__version__ = "0.1.0"
