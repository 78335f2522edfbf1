"""clipjax.data."""
