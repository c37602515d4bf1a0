"""PPO for language models: ``trainer.train_ppo`` runs the phases (``models``, ``rollout``,
``scoring``, ``optimise``, ``figures``, ``checkpoint``); the pure maths lives in ``core``;
see IMPLEMENTATION_DETAILS.md."""
