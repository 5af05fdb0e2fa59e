"""Clean-up passes: what exporters leave behind (dead code and outputs, no-ops, constants, duplicates)."""
