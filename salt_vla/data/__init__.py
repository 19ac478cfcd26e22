"""SSv2 index, video decoding, deterministic views and synthetic datasets."""
