"""SimpleMatch: semantic correspondence with a lightweight upsampling decoder and sparse window matching."""

__version__ = "0.1.0"
