"""Compile as a service: tenants, jobs, a huey queue, an HTTP API and its client.

`tenants` (keys, directories, quotas, audit), `jobs` (records and their states),
`seal` (a teacher key sealed for the queue), `execute` (one job run by a worker),
`queue` (huey: SQLite by default, Redis to share workers), `app` (the FastAPI routes),
`client` (`kolm compile --remote`, `kolm login`).
"""
