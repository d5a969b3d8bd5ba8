"""The monitoring dashboard and HTTP API (issue 5): Starlette + uvicorn, talking to the system over
NATS only. docs/dashboard.md describes it."""
