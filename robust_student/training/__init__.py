"""training (arrives with a later issue)."""
