"""The engine: loading and saving, the pipeline, patterns, analysis, verification, the input model,
measurement, calibration and the report data. It imports no pass, stage or application module."""
