"""Fusion passes: BatchNormalization and affine folding, Pad folding, re-composed ops, horizontal fusion."""
