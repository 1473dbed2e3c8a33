"""Model work, free of HTTP: loading the bundles, the classify and generate services,
micro-batching, sampling and the guards that stop a run at its deadline.

Imports nothing from `server.http` or `server.observability`; failures are plain exceptions
(`server.inference.errors`) that `server.http.errors` turns into HTTP answers.
"""
