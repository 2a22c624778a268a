"""Adapters for the tools people label with (CVAT's auto-annotation: `integrations.cvat`)."""
