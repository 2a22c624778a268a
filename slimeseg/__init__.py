"""slimeseg: segment images like a given example (SLiMe, ICLR 2024) on frozen Stable Diffusion."""

__version__ = "0.1.0"
