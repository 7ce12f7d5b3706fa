"""Scoring: scorers (trajectory features and maps), the detector, cached extraction, the feature recipe."""
