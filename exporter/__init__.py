"""Prometheus exporter for CDNetworks asynchronous task APIs."""

__version__ = "0.1.0"
