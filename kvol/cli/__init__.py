"""The kvol command line."""
