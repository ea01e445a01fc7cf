"""Metrics: errors against known betas, and scorers for model selection."""

# --- Coefficient and step-time errors against known betas (simulated traces) ---


# --- Scorers for cross-validation and GridSearchCV (phase durations) ---
