"""Streaming full-duplex decoding with one KV cache (format §8).

May import: ``format``.
"""
