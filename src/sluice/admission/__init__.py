"""Admission: authentication, limits, priority queueing."""
