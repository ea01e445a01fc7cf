"""Metrics: how close estimated betas are to the truth, and scorers for model selection."""

# --- Coefficient and step-time errors against known betas (simulated traces) ---


# --- Scorers for cross-validation and GridSearchCV (phase durations) ---
