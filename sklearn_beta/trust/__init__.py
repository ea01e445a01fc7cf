"""Trust in a fit.

Intervals, time blocks, trace edges, identifiability, what-if probes, window
fits.
"""
