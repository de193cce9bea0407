"""ggprec: mixed-precision plans for GGUF models, built and measured with llama.cpp."""

__version__ = "0.1.0"
