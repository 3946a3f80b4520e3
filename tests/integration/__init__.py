"""Integration tests: the production-shaped stack (docker-compose.yaml) and its local twin."""
