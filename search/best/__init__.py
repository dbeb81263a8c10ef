"""The best model of a search: its export (`best/`), ONNX, and the loader users call."""
