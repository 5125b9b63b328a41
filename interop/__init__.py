"""Framework adapters exchanging arrays with the core through DLPack.

``cutrans.interop.torch`` (PyTorch: custom ops ``cutrans::*`` with autograd, torch.compile
support) and ``cutrans.interop.jax`` (``jax.custom_vjp`` over ``pure_callback`` /
``buffer_callback``). Import them explicitly; this package imports neither framework.
"""
