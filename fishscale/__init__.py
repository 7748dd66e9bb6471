"""fishscale: train image classifiers on huge, long-tailed species datasets (fish-vista)."""
__version__ = "0.1.0"
