"""Operate a TorchServe: start and stop it, talk to it over REST, gRPC and the management API,
roll model versions, compare them (A/B), and put it under bounded load and fault checks."""
