"""params.yaml: loading and validation (params), its schema, and the presets."""
