"""clipjax: CLIP in JAX/Flax with optimal-transport methods over ott-jax.

Importing this package has no side effects; import submodules explicitly, e.g.
`import clipjax.model`, `from clipjax import ot`.
"""

__version__ = "0.1.0"
