"""latentserve: the public gRPC API (latentserve.v1, generated from proto/), the contract and data that
training, export and serving share, and the `latentserve` CLI."""
