"""Training on region features in the SCAN precomputed layout (torch)."""
