"""Incidents: rules over decision records and monitor events open deduplicated
incidents, notify sinks through a durable outbox, and contain routes."""
