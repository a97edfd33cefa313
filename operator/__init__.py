"""kvol operator: reconciles Volume and VolumeBackend resources (kopf)."""
