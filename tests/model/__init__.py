"""Model-based tests: several working copies of one volume against a reference model."""
