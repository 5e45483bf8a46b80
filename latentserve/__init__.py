"""latentserve: the public gRPC API (latentserve.v1, generated from proto/) and the `latentserve` CLI."""
