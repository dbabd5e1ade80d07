"""The gateway's routers: the inference protocol, the client's own view, the admin API."""
