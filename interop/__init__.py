"""Framework adapters (PyTorch, JAX) exchanging arrays through DLPack."""
