"""Data sets: folder scanning, image decoding, transforms and caches."""
