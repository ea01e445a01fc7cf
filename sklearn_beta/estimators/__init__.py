"""The estimators.

The exposure transformer, the baseline and iterative regressors, the functional
API.
"""
