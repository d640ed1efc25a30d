"""The import side (`python import_model.py`): load a model file, export it to ONNX, check it, store it.

Needs torch; the server never imports this package.
"""
