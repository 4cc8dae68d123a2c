"""paramlab: config-driven experiments on parameter management (tied layers, init, dropout, lr)."""
__version__ = "0.2.0"
