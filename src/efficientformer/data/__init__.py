"""Datasets and transforms for training and evaluation."""
