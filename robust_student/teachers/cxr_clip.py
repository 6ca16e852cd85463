"""Placeholder: filled in by the teacher backend work."""
