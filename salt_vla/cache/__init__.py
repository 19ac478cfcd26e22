"""The latent cache: build, verify, info; store format and memory-mapped reader."""
