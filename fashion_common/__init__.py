"""Framework-free pieces both twins share: spec, errors, checkpoint format, config, data, text."""
