"""attnbook: the library behind The Attention Book.

Conventions (stated once, on the notation page): tensors are ``(batch, heads, seq,
head_dim)``; boolean masks mean **True = may attend**.
"""
__version__ = "0.1.0"
