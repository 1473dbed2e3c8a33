"""One module per endpoint; each resource gets the shared `ServerRuntime` at construction."""
