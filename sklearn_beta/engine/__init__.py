"""The engine.

The step loop of vLLM V1 scheduling and the replay of a trace through it.
"""
