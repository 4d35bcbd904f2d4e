"""Tests of the dataset readers."""
