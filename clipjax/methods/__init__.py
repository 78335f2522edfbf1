"""clipjax.methods."""
