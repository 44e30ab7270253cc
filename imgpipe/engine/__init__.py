"""The engine: what every task shares (recipe, registry, runner, trainer, pipeline, export, scoring), naming no task."""
