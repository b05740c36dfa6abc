"""urpo: Unified Reward & Policy Optimization on PyTorch Lightning."""
