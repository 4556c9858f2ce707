"""Governance gateway: an async reverse proxy that governs LLM and RAG output."""

__version__ = "0.1.0"
