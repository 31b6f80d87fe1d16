"""Placeholder: converters are registered by the family work in progress."""
