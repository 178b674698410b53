"""The HTTP front: the HTTP/1.1 server, what it serves (a typed app), the exporter's pages and API, and the web
config.
"""
