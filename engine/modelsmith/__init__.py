"""Modelsmith: a control plane for governed domain-specialist small models."""

__version__ = "0.1.0"
