"""Dock widgets, one module each; they call the library and hold no model code."""
