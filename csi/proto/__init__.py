"""CSI protocol messages, generated from csi.proto at install time."""
