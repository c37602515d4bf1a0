"""PPO for language models: the pure maths lives in ``core``; see IMPLEMENTATION_DETAILS.md."""
