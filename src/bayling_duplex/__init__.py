"""bayling_duplex: training code for native full-duplex spoken dialogue models."""

__version__ = "0.1.0"
