"""Text generation behind one small interface: onnxruntime-genai on the device, a fake in tests."""

from appliance.generation.base import GenerationParams, Generator

__all__ = ["GenerationParams", "Generator"]
