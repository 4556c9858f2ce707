"""Canary and weighted routes: the weights in force, automatic rollback, promote and roll back.

A route with ``variants`` splits its traffic (``gateway.proxy.variants``
chooses per request). This subsystem keeps the weights in force
(``weights``), compares each candidate variant with the baseline over a
window of decision records read from the store, so every process and
replica counts (``compare``), rolls a candidate back when a limit is passed
and raises an incident with both variants' figures (``service``), and
offers promote, roll back and reset through the admin API (``api``) and
``gateway route`` (``cli``).
"""
