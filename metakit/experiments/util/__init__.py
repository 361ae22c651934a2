"""Small helpers with no meta-learning in them: registries, caches, memory."""
