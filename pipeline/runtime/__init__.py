"""Running the roles: pipeline wiring, worker processes, supervisor, priority, CLI."""
