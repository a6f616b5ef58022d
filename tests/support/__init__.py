"""Helpers shared by several test folders and by bench/: namespaces, captures, listeners, policies, waits."""
