"""Tensor operations shared by several methods."""
