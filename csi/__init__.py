"""kvol CSI node plugin."""
