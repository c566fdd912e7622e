"""QR check-ins: frame sources, decoding, payload recognition, cooldown and masking."""
