"""The store: one SQL repository over two drivers (SQLite, PostgreSQL), row types, the change log, migration and
in-memory aggregates.
"""
