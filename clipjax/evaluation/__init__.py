"""clipjax.evaluation."""
