"""The exporter process: drain rings, batch per signal by concatenation, send, commit after ack.

Entry point: `otlp_ingest.exporter.main.run_exporter`.
"""
