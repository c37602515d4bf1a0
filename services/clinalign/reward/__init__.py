"""Reward service: scores (prompt, response) pairs with a clinician-preference reward model."""
