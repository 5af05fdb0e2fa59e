"""Compression passes: magnitude, channel and N:M pruning, low-rank factorization (lossy, opt-in)."""
