"""What the server tells its operators: Prometheus metrics, request logs, the instrumented
models, drift monitors and the shadow candidate.

May import `server.inference` (the loaded models), never `server.http` or the resources.
"""
