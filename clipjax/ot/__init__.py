"""clipjax.ot."""
