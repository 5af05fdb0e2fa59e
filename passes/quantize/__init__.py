"""Quantization passes: static and dynamic INT8, FP16 (lossy, opt-in)."""
