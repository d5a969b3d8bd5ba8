"""The API a `call:` job's Python function receives (`from cropcron.jobs import RunContext`).

It lives in shared/run_context.py, where the runner (a service) can import it without reaching up
into the CLI package; job code keeps this stable import path.
"""

from shared.run_context import RunContext

__all__ = ["RunContext"]
