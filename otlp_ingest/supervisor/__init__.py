"""The supervisor: starts, watches, restarts and stops the receiver workers and exporters."""
