"""Thin HTTP handlers: parse, call the service once, render."""
