"""clipjax.attacks."""
