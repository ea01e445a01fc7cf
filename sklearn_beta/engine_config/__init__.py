"""Engine configuration.

The search over chunk sizes and token budgets, its scores, the trace fits it
drives.
"""
