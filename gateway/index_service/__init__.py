"""Copyright indexes in a running gateway: opened for detectors, watched, reloaded,
and the ``gateway index`` commands that build and change them."""
