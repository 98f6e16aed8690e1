"""fashion-twins: the PyTorch tutorial's Fashion-MNIST MLP, twinned three times: PyTorch, Flax linen and Flax NNX.

The command line lives in fashion_twins.cli.
"""

__version__ = "0.1.0"
