"""facegan: distributed training service for face-generating models."""

__version__ = "0.1.0"
