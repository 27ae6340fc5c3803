"""The embedded datasets, generated offline: TFDS builders (pystdlib, digits, shapes,
audio_captions) and the conditional task built from pystdlib's functions."""
