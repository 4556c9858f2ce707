"""Fuzz targets for the gateway's input parsers, and the runner that drives them.

A target is a Hypothesis ``@given`` function named ``fuzz_*`` in a module
``fuzz/targets_*.py``. It feeds its input to the code under test and lets
only that code's documented errors pass; anything else it raises is a crash.
``python -m fuzz --seconds 60`` runs every target (see ``fuzz.runner``).
"""
