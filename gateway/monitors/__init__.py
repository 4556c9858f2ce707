"""Windowed monitors: rejection rate, disparate impact, score drift, and outcome feedback."""
