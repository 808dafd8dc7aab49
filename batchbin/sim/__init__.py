"""The simulator: continuous batching on request sizes, step costs, stored runs as input, the Multi-Bin model."""
