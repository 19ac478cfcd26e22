"""Multiblock-3D, ratio, tube and random masks, and their collation."""
