"""clipjax.train."""
