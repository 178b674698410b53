"""Object-storage (Fmgr) jobs: the wire (codes, status JSON, notification verification, the status client) and the
tracking of ids.
"""
