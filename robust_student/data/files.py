"""Placeholder: imagefolder and csv datasets."""
