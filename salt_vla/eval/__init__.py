"""Frozen-encoder evaluation."""
