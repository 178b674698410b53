"""The vendor's APIs: the one HTTP layer (deadline, size cap, error classification), the CDN status query, request
logging and signing.
"""
