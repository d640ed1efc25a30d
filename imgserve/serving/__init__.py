"""What the server runs and the Bento packs: decoding, the model, batching, the HTTP boundary, the pages.

No torch: the serving image has none. `service.py` at the project root wires these into the BentoML service.
"""
