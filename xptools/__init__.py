"""xptools: a command-line toolbox for Gaia DR3 BP/RP (XP) spectra."""

__version__ = "0.1.0"
