"""The gateway: starlette app, client sessions, transports, REST, settings and the CLI."""
