"""The policy contract: what a detector is, what a policy holds, what a kind declares.

Detectors, the policy engine and plugins meet here; nothing in this package
imports anything of the gateway above the bottom layer.
"""
