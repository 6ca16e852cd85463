"""methods (arrives with a later issue)."""
