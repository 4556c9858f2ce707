"""The review queue: held responses, the reviewer API and UI, outcomes for clients."""
