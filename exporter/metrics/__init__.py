"""The metrics catalogue, exact windows, the exporter's health and the collector that turns the store into metric
families.
"""
