"""The distributed backend.

The estimators on Dask collections, partition by partition.
"""
