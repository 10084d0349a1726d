"""The local job server (`dreamsculpt serve`): the backend the Blender add-on talks to.

Parts: `settings` (folders, port, token), `schemas` (the API's pydantic models), `store`
(jobs on disk), `worker` (the process that runs the engine), `dispatcher` (the FIFO queue
and the worker's life), `app` (the FastAPI routes and guards) and `serve` (start and bind).
Only `worker` imports torch; the server process stays light and answers while a job runs.
"""
