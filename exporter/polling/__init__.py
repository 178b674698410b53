"""Polling within the vendor's budget: the planner, the page-size search, the rate budget, the worker thread, the
pollers, leases and retention.
"""
