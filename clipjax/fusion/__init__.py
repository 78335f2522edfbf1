"""clipjax.fusion."""
