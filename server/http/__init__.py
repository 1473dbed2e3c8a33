"""The HTTP edge: reading and validating bodies, writing answers, the one mapping of failures to
status codes, bearer auth, admission (shed at once instead of queueing) and the SIGTERM drain.

May import `server.inference` (its exceptions and the request budget), never the other way.
"""
