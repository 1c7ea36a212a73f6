"""Experiments on top of the product: they run the stages as ordinary commands and compare them."""
