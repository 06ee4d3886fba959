"""gRPC plumbing shared by both services: error mapping, interceptors, server runner."""
