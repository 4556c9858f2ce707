"""Windowed monitors for decision endpoints: rejection rate, disparate impact, score drift."""
