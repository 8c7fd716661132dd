"""Telemetry shared by every Tollway process: metrics, traces, structured logs."""
