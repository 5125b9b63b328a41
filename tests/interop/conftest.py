"""Fixtures of the adapter tests."""
import pytest


@pytest.fixture
def x64():
    """jax with float64 enabled (jax_enable_x64), restored afterwards; skips without jax."""
    jax = pytest.importorskip("jax")
    old = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield jax
    jax.config.update("jax_enable_x64", old)
