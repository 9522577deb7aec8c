"""The device runtime: everything that runs on the plant's box.

May import numpy, onnxruntime, onnxruntime-genai, tokenizers, hnswlib, flask and the document
parsers. Never torch, transformers or peft (tests/appliance/test_no_torch.py proves it).
"""

__version__ = "0.1.0"
