"""alzlib: the library behind the Alzheimer MRI slice pipeline's notebooks."""

__version__ = "0.1.0"
