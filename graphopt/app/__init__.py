"""The application: the API (`optimize`, `inspect`), the one options schema, the CLI, the build step
(config, targets, manifest, runner), `compare` and the renderers."""
