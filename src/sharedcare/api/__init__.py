"""The HTTP layer: parses requests, calls the domain modules, renders responses. Nothing else."""
