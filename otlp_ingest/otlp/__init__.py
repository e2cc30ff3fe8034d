"""The OTLP protocol itself, shared by the receiver and the exporter sides."""
