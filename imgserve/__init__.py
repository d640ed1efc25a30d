"""imgserve: a researcher's PyTorch image classifier, imported, served and called. Three jobs, three subpackages:

- `imgserve.importing`: a model file -> a verified ONNX entry in the BentoML model store (torch, import only);
- `imgserve.serving`: what the server runs and the Bento packs (ONNX Runtime, no torch);
- `imgserve.client`: classify a folder through a running server (httpx, no BentoML).

`imgserve.config` holds every constant and setting that more than one of them reads.
"""
