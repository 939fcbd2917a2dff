"""maugpt: the MAU-GPT experiment suite for multimodal industrial anomaly understanding."""

__version__ = "0.1.0"
