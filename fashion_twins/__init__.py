"""fashion-twins: the PyTorch tutorial's Fashion-MNIST MLP, twinned in PyTorch and Flax.

The command line lives in fashion_twins.cli.
"""

__version__ = "0.1.0"
