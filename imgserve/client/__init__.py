"""Classify a folder through a running server (`python client.py`): its requests and its results table.

Plain HTTP: the client side needs no BentoML and no torch.
"""
